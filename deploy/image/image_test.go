package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image `make image` writes runs peakdesk as a non-root user from a
// static binary, carries the CA certificates and time zones, and its binary
// is the real one: extracted from the tarball it runs `peakdesk version`.
func TestImageTarballRunsPeakdeskAsNonRoot(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image holds a linux binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "peakdesk")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=9.8.7-test -X main.commit=abc123",
		"-o", bin, "../../cmd/peakdesk")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "image.tar")
	err := writeImage(Config{Binary: bin, Certs: certsPath, Zones: zonesPath, Tag: "peakdesk:9.8.7-test",
		Arch: runtime.GOARCH, Created: time.Date(2026, 11, 11, 0, 0, 0, 0, time.UTC),
		Labels: map[string]string{"org.opencontainers.image.version": "9.8.7-test"}}, out)
	if err != nil {
		t.Fatal(err)
	}

	// As docker load reads it: manifest.json, the config, the layers.
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || strings.HasPrefix(cf.Config.User, "0") {
		t.Errorf("user %q, want 65532:65532", cf.Config.User)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != binaryPath || cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("entrypoint %q, platform %s/%s", cf.Config.Entrypoint, cf.OS, cf.Architecture)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "9.8.7-test" {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	files := imageFiles(t, img)
	for _, want := range []string{"usr/local/bin/peakdesk", "etc/ssl/certs/ca-certificates.crt",
		"usr/share/zoneinfo/Asia/Shanghai", "etc/passwd", "home/peakdesk/", "tmp/"} {
		if _, ok := files[want]; !ok {
			t.Errorf("the image has no %s", want)
		}
	}
	if h := files["usr/local/bin/peakdesk"]; h != nil && h.Mode&0o111 == 0 {
		t.Errorf("the binary is not executable: %o", h.Mode)
	}
	if h := files["home/peakdesk/"]; h != nil && h.Uid != 65532 {
		t.Errorf("home belongs to uid %d", h.Uid)
	}
	if !bytes.Contains(files["etc/passwd"].body, []byte("peakdesk:x:65532:65532")) {
		t.Errorf("passwd: %s", files["etc/passwd"].body)
	}
	certs, _ := os.ReadFile(certsPath)
	if !bytes.Equal(files["etc/ssl/certs/ca-certificates.crt"].body, certs) {
		t.Error("the CA bundle differs from the machine's")
	}

	// The binary inside: static (no ELF interpreter, so it runs on an empty
	// base) and the one built above.
	inside := filepath.Join(dir, "inside-peakdesk")
	if err := os.WriteFile(inside, files["usr/local/bin/peakdesk"].body, 0o755); err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(inside)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	ef.Close()
	v, err := exec.Command(inside, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(v), "peakdesk 9.8.7-test commit abc123") {
		t.Errorf("peakdesk version: %v: %s", err, v)
	}

	// As OCI tools read it: oci-layout and index.json naming the manifest.
	index := tarEntry(t, out, "index.json")
	var idx v1.IndexManifest
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, index)
	}
	d := idx.Manifests[0]
	if d.Annotations["io.containerd.image.name"] != "peakdesk:9.8.7-test" {
		t.Errorf("index.json names %v", d.Annotations)
	}
	m := tarEntry(t, out, "blobs/sha256/"+d.Digest.Hex)
	var manifest v1.Manifest
	if sum := sha256.Sum256(m); hex.EncodeToString(sum[:]) != d.Digest.Hex || json.Unmarshal(m, &manifest) != nil {
		t.Fatalf("the manifest blob does not match index.json's digest")
	}
	cfgName, _ := img.ConfigName()
	if manifest.MediaType != types.OCIManifestSchema1 || manifest.Config.Digest != cfgName || len(manifest.Layers) != 2 {
		t.Errorf("OCI manifest %+v; config is %v", manifest, cfgName)
	}
	for _, l := range manifest.Layers {
		tarEntry(t, out, "blobs/sha256/"+l.Digest.Hex)
	}
}

type imageFile struct {
	*tar.Header
	body []byte
}

// imageFiles flattens the image's layers (no whiteouts: the image has none).
func imageFiles(t *testing.T, img v1.Image) map[string]*imageFile {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*imageFile{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			files[h.Name] = &imageFile{Header: h, body: b}
		}
		rc.Close()
	}
	return files
}

func tarEntry(t *testing.T, path, name string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no %s (%v)", path, name, err)
		}
		if h.Name == name {
			b, _ := io.ReadAll(tr)
			return b
		}
	}
}
