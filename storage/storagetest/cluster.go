package storagetest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// NATSClusterConfig configures NATSCluster.
type NATSClusterConfig struct {
	// Include is a nats-server config file every node includes: the
	// accounts, users and permissions (deploy/k8s/nats/auth.conf). Empty:
	// no auth, every client in the global account.
	Include string
	// Env holds the nodes' extra environment (KEY=value): the variables
	// Include refers to, like the users' nkeys.
	Env []string
	// TLS makes clients and routes speak TLS, with certificates for
	// 127.0.0.1 from a CA made for the test (NATSCluster.CAFile).
	TLS bool
}

// NATSCluster is a 3-node NATS JetStream cluster of real nats-server
// processes (the version go.mod pins, run through `go tool`) on loopback
// ports, with routes between them: streams made with Replicas 3 live on
// all three. A node can be killed (SIGKILL), stopped and started again on
// the same ports and store, so tests can take leaders away and restart the
// cluster node by node.
type NATSCluster struct {
	t      testing.TB
	bin    string
	dir    string
	scheme string
	// CAFile is the CA of the nodes' certificates (TLS only), for NATS_CA.
	CAFile string
	// Account holds the streams: PEAKDESK with Include's accounts, else $G.
	Account string
	env     []string
	nodes   []*natsNode
}

type natsNode struct {
	name                     string
	client, cluster, monitor int
	conf, log                string
	mu                       sync.Mutex
	cmd                      *exec.Cmd
	done                     chan struct{}
}

var natsServerBin = sync.OnceValues(func() (string, error) {
	// `go tool -n` builds the pinned server once (cached) and prints its path.
	out, err := exec.Command("go", "tool", "-n", "nats-server").Output()
	if err != nil {
		return "", fmt.Errorf("go tool -n nats-server: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
})

// StartNATSCluster starts a 3-node JetStream cluster and waits until it has a
// meta leader; it is stopped when the test ends.
func StartNATSCluster(t testing.TB, cfg NATSClusterConfig) *NATSCluster {
	t.Helper()
	bin, err := natsServerBin()
	if err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	c := &NATSCluster{t: t, bin: bin, dir: t.TempDir(), scheme: "nats", Account: "$G",
		env: append(os.Environ(), cfg.Env...)}
	ports := freePorts(t, 9)
	for i := range 3 {
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("n%d", i),
			client: ports[3*i], cluster: ports[3*i+1], monitor: ports[3*i+2]})
	}
	var tlsBlock string
	if cfg.TLS {
		c.scheme = "tls"
		c.CAFile, tlsBlock = c.makeCerts()
	}
	include := ""
	if cfg.Include != "" {
		b, err := os.ReadFile(cfg.Include)
		if err != nil {
			t.Fatalf("storagetest: %v", err)
		}
		if err := os.WriteFile(filepath.Join(c.dir, "auth.conf"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		include, c.Account = "include ./auth.conf\n", "PEAKDESK"
	}
	var routes []string
	for _, n := range c.nodes {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", n.cluster))
	}
	for _, n := range c.nodes {
		n.conf = filepath.Join(c.dir, n.name+".conf")
		n.log = filepath.Join(c.dir, n.name+".log")
		routeTLS := ""
		if cfg.TLS {
			routeTLS = strings.Replace(tlsBlock, "tls {", "tls {\n    verify: true", 1)
		}
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
max_payload: 1MB
jetstream { store_dir: %q, max_file_store: 16G, max_memory_store: 256M }
cluster {
  name: peakdesk-test
  listen: 127.0.0.1:%d
  routes: [%s]
  %s
}
%s
%s`, n.name, n.client, n.monitor, filepath.Join(c.dir, n.name), n.cluster, strings.Join(routes, ", "),
			routeTLS, tlsBlock, include)
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.stopAll)
	for i := range c.nodes {
		c.Start(i)
	}
	c.WaitHealthy(60 * time.Second)
	return c
}

// NATSUsers makes a user per role for deploy/k8s/nats/auth.conf: the
// servers' environment (PEAKDESK_NKEY_<ROLE>=its public nkey, for
// NATSClusterConfig.Env) and, per role, a file holding its nkey seed (the
// role's NATS_CREDS).
func NATSUsers(t testing.TB, roles ...string) (env []string, creds map[string]string) {
	t.Helper()
	dir := t.TempDir()
	creds = map[string]string{}
	for _, r := range roles {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		seed, err := kp.Seed()
		if err != nil {
			t.Fatal(err)
		}
		creds[r] = filepath.Join(dir, r+".nk")
		if err := os.WriteFile(creds[r], seed, 0o600); err != nil {
			t.Fatal(err)
		}
		env = append(env, "PEAKDESK_NKEY_"+strings.ToUpper(r)+"="+pub)
	}
	return env, creds
}

// URL is the comma-separated client URLs of the three nodes (NATS_URL).
func (c *NATSCluster) URL() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, fmt.Sprintf("%s://127.0.0.1:%d", c.scheme, n.client))
	}
	return strings.Join(urls, ",")
}

// NodeURL is node i's client URL alone.
func (c *NATSCluster) NodeURL(i int) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", c.scheme, c.nodes[i].client)
}

// Start starts node i (again) on its ports and store, and waits until it
// accepts clients.
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	n := c.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		c.t.Fatalf("storagetest: nats %s is running", n.name)
	}
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "-c", n.conf)
	cmd.Env = c.env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("storagetest: start nats %s: %v", n.name, err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	done := n.done
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !c.healthy(i, "/healthz?js-enabled-only=true") {
		select {
		case <-done:
			c.t.Fatalf("storagetest: nats %s exited at start:\n%s", n.name, c.tail(i))
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("storagetest: nats %s not up in 30 s:\n%s", n.name, c.tail(i))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends node i with SIGKILL, as a crash would, and waits for it.
func (c *NATSCluster) Kill(i int) { c.signal(i, syscall.SIGKILL) }

// Stop ends node i with SIGTERM (a clean shutdown) and waits for it.
func (c *NATSCluster) Stop(i int) { c.signal(i, syscall.SIGTERM) }

func (c *NATSCluster) signal(i int, sig syscall.Signal) {
	n := c.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
	n.cmd = nil
}

func (c *NATSCluster) stopAll() {
	for i := range c.nodes {
		c.Stop(i)
	}
	if c.t.Failed() {
		for i := range c.nodes {
			c.t.Logf("nats %s log (end):\n%s", c.nodes[i].name, c.tail(i))
		}
	}
}

// WaitHealthy waits until every running node reports JetStream healthy:
// its streams and consumers current with their leaders (/healthz), as a
// rolling restart must before it takes the next node down.
func (c *NATSCluster) WaitHealthy(within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for i, n := range c.nodes {
		n.mu.Lock()
		running := n.cmd != nil
		n.mu.Unlock()
		for running && !c.healthy(i, "/healthz") {
			if time.Since(start) > within {
				c.t.Fatalf("storagetest: nats %s not healthy in %s", n.name, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return time.Since(start)
}

func (c *NATSCluster) healthy(i int, path string) bool {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", c.nodes[i].monitor, path))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// StreamLeader is the index of the node leading stream's RAFT group, as
// the running nodes' monitoring reports it; -1 if none knows one.
func (c *NATSCluster) StreamLeader(stream string) int {
	for _, n := range c.nodes {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?streams=true&acc=%s", n.monitor, c.Account))
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(resp.Body).Decode(&jsz)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name != stream || s.Cluster.Leader == "" {
					continue
				}
				for j, m := range c.nodes {
					if m.name == s.Cluster.Leader {
						return j
					}
				}
			}
		}
	}
	return -1
}

// tail is the end of node i's log.
func (c *NATSCluster) tail(i int) string {
	b, _ := os.ReadFile(c.nodes[i].log)
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines[max(0, len(lines)-25):], "\n")
}

// makeCerts writes a CA and a certificate for 127.0.0.1 and localhost
// (server and client use: routes present it to each other) and returns the
// CA's file and the nodes' tls block.
func (c *NATSCluster) makeCerts() (string, string) {
	c.t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "peakdesk test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		c.t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	caCert, _ := x509.ParseCertificate(caDER)
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		c.t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		c.t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(c.dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			c.t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	certFile := write("cert.pem", "CERTIFICATE", leafDER)
	keyFile := write("key.pem", "EC PRIVATE KEY", keyDER)
	return caFile, fmt.Sprintf("tls {\n    cert_file: %q\n    key_file: %q\n    ca_file: %q\n    timeout: 5\n  }", certFile, keyFile, caFile)
}

// freePorts returns n loopback ports free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
