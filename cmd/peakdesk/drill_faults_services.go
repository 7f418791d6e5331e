package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// The fault drill's own services: a Postgres cluster and a Redis server
// that only the drill uses, so that it can restart and stop them, and the
// peakdesk role processes it kills.

// freePort returns a TCP port on loopback nobody listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// pgBinary finds a PostgreSQL server program: on PATH, else in the newest
// /usr/lib/postgresql/*/bin (Debian's layout).
func pgBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if p := filepath.Join(dirs[i], name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (on PATH or in /usr/lib/postgresql/*/bin): the fault drill runs a Postgres of its own; "+
		"install PostgreSQL's server (`make services` does: apt-get install postgresql)", name)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// drillPostgres is a Postgres cluster of the drill's own on a loopback port.
type drillPostgres struct {
	pgCtl, dataDir, logFile string
	port                    int
	asUser                  *user.User // the OS user it runs as when the drill runs as root
}

// startDrillPostgres makes a cluster under dir with initdb (as the
// "postgres" OS user when the drill runs as root: Postgres refuses root)
// and starts it.
func startDrillPostgres(ctx context.Context, dir string) (*drillPostgres, error) {
	initdb, err := pgBinary("initdb")
	if err != nil {
		return nil, err
	}
	pgCtl, err := pgBinary("pg_ctl")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	pg := &drillPostgres{pgCtl: pgCtl, dataDir: filepath.Join(dir, "data"), logFile: filepath.Join(dir, "postgres.log"), port: port}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if pg.asUser, err = user.Lookup("postgres"); err != nil {
			return nil, errors.New("the drill runs as root and Postgres refuses root: it needs the OS user \"postgres\" " +
				"(made by the postgresql package; `make services` installs it)")
		}
		uid, _ := strconv.Atoi(pg.asUser.Uid)
		gid, _ := strconv.Atoi(pg.asUser.Gid)
		// The user must reach dir: open the temporary directories above it.
		for d := dir; d != "/" && d != "." && strings.HasPrefix(d, os.TempDir()) && d != os.TempDir(); d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				return nil, err
			}
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if out, err := pg.command(ctx, initdb, "-D", pg.dataDir, "-A", "trust", "-U", "postgres", "-E", "UTF8",
		"--locale=C", "--no-sync").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	if err := pg.ctl(ctx, "start"); err != nil {
		return nil, err
	}
	return pg, nil
}

// command runs a Postgres program as the cluster's user.
func (pg *drillPostgres) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, prog, args...)
	if pg.asUser != nil {
		uid, _ := strconv.Atoi(pg.asUser.Uid)
		gid, _ := strconv.Atoi(pg.asUser.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Env = append(os.Environ(), "HOME="+pg.asUser.HomeDir, "USER=postgres")
	}
	cmd.Dir = filepath.Dir(pg.dataDir)
	return cmd
}

// ctl runs pg_ctl: start, stop or restart, waiting until it is done. Stops
// are fast (connections cut, a clean shutdown), as a managed database's
// restart is.
func (pg *drillPostgres) ctl(ctx context.Context, verb string) error {
	args := []string{"-D", pg.dataDir, "-l", pg.logFile, "-w", "-t", "60"}
	if verb != "start" {
		args = append(args, "-m", "fast")
	}
	if verb != "stop" {
		args = append(args, "-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
			pg.port, filepath.Dir(pg.dataDir)))
	}
	args = append(args, verb)
	if out, err := pg.command(ctx, pg.pgCtl, args...).CombinedOutput(); err != nil {
		logTail, _ := os.ReadFile(pg.logFile)
		return fmt.Errorf("pg_ctl %s: %w: %s\n%s", verb, err, out, tail(string(logTail), 2000))
	}
	return nil
}

// URL is the superuser's URL of database name.
func (pg *drillPostgres) URL(name string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.port, name)
}

// createDatabase makes an empty database.
func (pg *drillPostgres) createDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}

// stop shuts the cluster down at once.
func (pg *drillPostgres) stop() {
	args := []string{"-D", pg.dataDir, "-w", "-t", "30", "-m", "immediate", "stop"}
	_ = pg.command(context.Background(), pg.pgCtl, args...).Run()
}

// drillRedis is a Redis server of the drill's own, without persistence.
type drillRedis struct {
	bin, dir string
	port     int
	cmd      *exec.Cmd
	done     chan struct{}
}

func startDrillRedis(ctx context.Context, dir string) (*drillRedis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found on PATH: the fault drill runs a Redis of its own; " +
			"install it (`make services` does: apt-get install redis-server)")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &drillRedis{bin: bin, dir: dir, port: port}
	return r, r.start(ctx)
}

// URL is the server's URL.
func (r *drillRedis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

// start runs the server and waits until it answers PING.
func (r *drillRedis) start(ctx context.Context) error {
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	r.cmd.SysProcAttr = childProcAttr()
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	r.done = make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Ping(pctx).Err()
		cancel()
		switch {
		case err == nil:
			return nil
		case time.Now().After(deadline) || ctx.Err() != nil:
			r.stop()
			return fmt.Errorf("redis-server did not answer in 20 s: %w", err)
		}
		select {
		case <-r.done:
			return errors.New("redis-server exited at start; see " + filepath.Join(r.dir, "redis.log"))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the server (SIGTERM; SIGKILL after 10 s) and waits for it.
func (r *drillRedis) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

// drillProc is one peakdesk role process of the drill.
type drillProc struct {
	name  string
	roles string
	cmd   *exec.Cmd
	addr  string // its HTTP listener
	// metricsAddr is where it serves /metrics.
	metricsAddr string
	done        chan struct{}
}

// procStarter starts peakdesk processes with the drill's environment.
type procStarter struct {
	// command returns the command that runs `peakdesk serve --roles roles`
	// (tests: the test binary in child mode).
	command func(roles string) *exec.Cmd
	env     []string
	dataDir string
	log     io.Writer
	logMu   *sync.Mutex
}

// start runs a role process and waits until it has started (its "peakdesk
// started" log line), relaying its warnings and errors to the log.
func (s *procStarter) start(ctx context.Context, name, roles string) (*drillProc, error) {
	cmd := s.command(roles)
	base := cmd.Env // the command's own environment, if it set one
	if base == nil {
		base = os.Environ()
	}
	cmd.Env = append(append(base, s.env...),
		"PEAKDESK_DATA_DIR="+filepath.Join(s.dataDir, name),
		"PEAKDESK_HTTP_ADDR=127.0.0.1:0", "PEAKDESK_METRICS_ADDR=127.0.0.1:0",
		"PEAKDESK_LOG_FORMAT=json", "PEAKDESK_LOG_LEVEL=info")
	cmd.SysProcAttr = childProcAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &drillProc{name: name, roles: roles, cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Level, Msg, Addr string
				MetricsAddr      string `json:"metrics_addr"`
			}
			_ = json.Unmarshal(sc.Bytes(), &line)
			if line.Msg == "peakdesk started" {
				select {
				case addr <- line.Addr + " " + line.MetricsAddr:
				default:
				}
			}
			if line.Level == "WARN" || line.Level == "ERROR" || line.Level == "" {
				s.logMu.Lock()
				fmt.Fprintf(s.log, "%s: %s\n", name, sc.Text())
				s.logMu.Unlock()
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	select {
	case a := <-addr:
		p.addr, p.metricsAddr, _ = strings.Cut(a, " ")
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before it started (%v)", name, cmd.ProcessState)
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		p.kill()
		return nil, fmt.Errorf("%s did not start in 60 s", name)
	}
}

// inflight reads the process's peakdesk_worker_inflight gauge (-1 when it
// cannot).
func (p *drillProc) inflight(ctx context.Context) int {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.metricsAddr+"/metrics", nil)
	if err != nil {
		return -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "peakdesk_worker_inflight "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(f)
			}
		}
	}
	return -1
}

// kill ends the process with SIGKILL and waits for it.
func (p *drillProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop ends the process with SIGTERM (SIGKILL after 30 s) and waits.
func (p *drillProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.kill()
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
