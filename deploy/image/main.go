// Command image builds peakdesk's container image without Docker: the static
// binary (CGO_ENABLED=0) on an empty base with the machine's CA
// certificates and time zones (Debian's ca-certificates and tzdata), a
// non-root user and `peakdesk` as the entrypoint. It writes one tarball
// that is both an OCI image layout (index.json, blobs/) and a docker-archive
// (manifest.json), as `docker save` does since Docker 25, so `docker load`,
// `podman load` and OCI tools (skopeo, crane, containerd) all read it.
// `make image` runs it; deploy/Dockerfile builds the same image with Docker.
//
//	go run ./deploy/image --binary bin/peakdesk-linux-amd64 --out bin/peakdesk-image.tar --tag peakdesk:dev
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's layout: what the Dockerfile builds too.
const (
	binaryPath = "/usr/local/bin/peakdesk"
	certsPath  = "/etc/ssl/certs/ca-certificates.crt"
	zonesPath  = "/usr/share/zoneinfo"
	homePath   = "/home/peakdesk"
	// uid and gid of the user peakdesk runs as: not root, and not one a
	// node's real user is likely to have.
	uid = 65532
)

// Config says what goes into the image.
type Config struct {
	// Binary is the static linux peakdesk binary.
	Binary string
	// Certs and Zones are the CA bundle and time-zone tree to copy, by
	// default the machine's Debian files.
	Certs, Zones string
	// Tag names the image in the tarball, e.g. peakdesk:1.4.0.
	Tag string
	// Created is the image's creation time; zero: the Unix epoch, so the
	// same inputs give the same image.
	Created time.Time
	// Labels are OCI annotations for the image config (version, revision).
	Labels map[string]string
	// Arch is the binary's architecture (GOARCH), default amd64.
	Arch string
}

func main() {
	var c Config
	var version, revision string
	flag.StringVar(&c.Binary, "binary", "bin/peakdesk-linux-amd64", "the static linux peakdesk binary")
	flag.StringVar(&c.Certs, "certs", certsPath, "CA certificate bundle to copy (Debian: ca-certificates)")
	flag.StringVar(&c.Zones, "zoneinfo", zonesPath, "time-zone tree to copy (Debian: tzdata)")
	flag.StringVar(&c.Tag, "tag", "peakdesk:dev", "image name and tag in the tarball")
	flag.StringVar(&c.Arch, "arch", "amd64", "the binary's architecture")
	flag.StringVar(&version, "version", "", "org.opencontainers.image.version label")
	flag.StringVar(&revision, "revision", "", "org.opencontainers.image.revision label")
	out := flag.String("out", "bin/peakdesk-image.tar", "the tarball to write")
	flag.Parse()
	c.Labels = map[string]string{"org.opencontainers.image.title": "peakdesk",
		"org.opencontainers.image.version": version, "org.opencontainers.image.revision": revision}
	if err := writeImage(c, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Println("wrote", *out, "("+c.Tag+"): docker load -i", *out, "| podman load -i", *out)
}

// Build assembles the image: a base layer (user, CA certificates, time
// zones, home and /tmp) and the binary's layer.
func Build(c Config) (v1.Image, error) {
	if c.Arch == "" {
		c.Arch = "amd64"
	}
	base, err := baseLayer(c)
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(c.Binary)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	app, err := layer(func(tw *tar.Writer) error {
		return addFile(tw, binaryPath, bin, 0o755, 0)
	})
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, base, app); err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", c.Arch
	cf.Created = v1.Time{Time: c.Created.UTC()}
	cf.Config.User = fmt.Sprintf("%d:%d", uid, uid)
	cf.Config.Entrypoint = []string{binaryPath}
	cf.Config.Cmd = []string{"serve"}
	cf.Config.WorkingDir = homePath
	cf.Config.Env = []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=" + certsPath, "PEAKDESK_DATA_DIR=" + homePath + "/data"}
	cf.Config.ExposedPorts = map[string]struct{}{"8080/tcp": {}, "9090/tcp": {}}
	cf.Config.Labels = map[string]string{}
	for k, v := range c.Labels {
		if v != "" {
			cf.Config.Labels[k] = v
		}
	}
	return mutate.ConfigFile(img, cf)
}

// baseLayer holds what the binary needs from an OS: a passwd entry for its
// user, CA certificates for https, time zones for time.LoadLocation, a home
// and /tmp.
func baseLayer(c Config) (v1.Layer, error) {
	certs, err := os.ReadFile(c.Certs)
	if err != nil {
		return nil, fmt.Errorf("ca certificates (Debian package ca-certificates): %w", err)
	}
	return layer(func(tw *tar.Writer) error {
		for _, d := range []struct {
			path string
			mode int64
			uid  int
		}{{"/etc", 0o755, 0}, {"/etc/ssl", 0o755, 0}, {"/etc/ssl/certs", 0o755, 0}, {"/home", 0o755, 0},
			{homePath, 0o700, uid}, {"/tmp", 0o1777, 0}, {"/usr", 0o755, 0}, {"/usr/local", 0o755, 0},
			{"/usr/local/bin", 0o755, 0}, {"/usr/share", 0o755, 0}} {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d.path, "/") + "/",
				Mode: d.mode, Uid: d.uid, Gid: d.uid, ModTime: time.Unix(0, 0)}); err != nil {
				return err
			}
		}
		passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\npeakdesk:x:%d:%d:peakdesk:%s:/sbin/nologin\n", uid, uid, homePath)
		group := fmt.Sprintf("root:x:0:\npeakdesk:x:%d:\n", uid)
		for _, f := range []struct{ path, body string }{{"/etc/passwd", passwd}, {"/etc/group", group}, {certsPath, string(certs)}} {
			if err := addFile(tw, f.path, []byte(f.body), 0o644, 0); err != nil {
				return err
			}
		}
		return addTree(tw, c.Zones, zonesPath)
	})
}

// addTree copies the tree at src to dst in the layer, keeping symbolic
// links as links (tzdata links many zones to others).
func addTree(tw *tar.Writer, src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("time zones (Debian package tzdata): %w", err)
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(filepath.ToSlash(filepath.Join(dst, rel)), "/")
		h := &tar.Header{Name: name, ModTime: time.Unix(0, 0), Mode: 0o644}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, target, 0o777
			return tw.WriteHeader(h)
		case d.IsDir():
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, name+"/", 0o755
			return tw.WriteHeader(h)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return addFile(tw, "/"+name, b, 0o644, 0)
		}
		return nil // sockets, devices: none expected
	})
}

func addFile(tw *tar.Writer, path string, body []byte, mode int64, owner int) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(path, "/"),
		Mode: mode, Size: int64(len(body)), Uid: owner, Gid: owner, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := tw.Write(body)
	return err
}

// layer makes an OCI layer (gzip) of the tar fill writes.
func layer(fill func(*tar.Writer) error) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := fill(tw); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// writeImage builds the image and writes the tarball to out.
func writeImage(c Config, out string) error {
	img, err := Build(c)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := WriteTarball(f, img, c.Tag); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteTarball writes img as an OCI image layout in a tar (oci-layout,
// index.json, blobs/sha256/…) with a docker-archive manifest.json beside
// it that points at the same blobs.
func WriteTarball(w io.Writer, img v1.Image, tag string) error {
	if tag == "" || !strings.Contains(tag, ":") {
		return errors.New("tag: want name:tag, like peakdesk:1.0.0")
	}
	tw := tar.NewWriter(w)
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	put := func(name string, body []byte) error { return addFile(tw, name, body, 0o644, 0) }
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/sha256/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var layerPaths []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if err := put(blob(d), b); err != nil {
			return err
		}
		layerPaths = append(layerPaths, blob(d))
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if err := put(blob(cfgName), cfg); err != nil {
		return err
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if err := put(blob(digest), manifest); err != nil {
		return err
	}
	index, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex,
		Manifests: []v1.Descriptor{{MediaType: types.OCIManifestSchema1, Digest: digest, Size: int64(len(manifest)),
			Annotations: map[string]string{"io.containerd.image.name": tag,
				"org.opencontainers.image.ref.name": tag[strings.LastIndex(tag, ":")+1:]}}}})
	if err != nil {
		return err
	}
	docker, err := json.Marshal(tarball.Manifest{{Config: blob(cfgName), RepoTags: []string{tag}, Layers: layerPaths}})
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		body []byte
	}{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"index.json", index}, {"manifest.json", docker}} {
		if err := put(f.name, f.body); err != nil {
			return err
		}
	}
	return tw.Close()
}
