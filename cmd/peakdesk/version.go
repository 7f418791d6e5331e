package main

import (
	"cmp"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set at link time by `make build`/`make image` (-ldflags "-X main.version=…
// -X main.commit=… -X main.buildDate=…"); when empty, the build information
// the Go toolchain embedded fills them where it can.
var version, commit, buildDate string

// buildInfo is what `peakdesk version` prints.
type buildInfo struct {
	Version, Commit, Date, Go string
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit, Date: buildDate, Go: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		b.Version = cmp.Or(b.Version, info.Main.Version)
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = cmp.Or(b.Commit, s.Value)
			case "vcs.time":
				b.Date = cmp.Or(b.Date, s.Value)
			}
		}
	}
	b.Version = cmp.Or(b.Version, "(devel)")
	b.Commit = cmp.Or(b.Commit, "unknown")
	b.Date = cmp.Or(b.Date, "unknown")
	return b
}

// runVersion prints one line: peakdesk <version> commit <c> built <date> <go>.
func runVersion(stdout io.Writer) error {
	b := readBuildInfo()
	_, err := fmt.Fprintf(stdout, "peakdesk %s commit %s built %s %s %s/%s\n",
		b.Version, b.Commit, b.Date, b.Go, runtime.GOOS, runtime.GOARCH)
	return err
}

// buildInfoCollector is the peakdesk_build_info gauge: always 1, labelled
// with what this binary is, so dashboards can tell versions apart during a
// rollout.
func buildInfoCollector(b buildInfo) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "peakdesk_build_info",
		Help:        "Always 1; the labels say which peakdesk build this process runs.",
		ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "go_version": b.Go},
	})
	g.Set(1)
	return g
}
