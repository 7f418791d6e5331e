package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// deploy/Dockerfile builds the image the tool builds: the same user,
// entrypoint, command, working directory, environment, ports, and files
// in the same places.
func TestDockerfileMatchesTheTool(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "peakdesk")
	zones := filepath.Join(dir, "zoneinfo")
	if err := os.WriteFile(bin, []byte("not run"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(zones, 0o755); err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(certs, []byte("-"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := Build(Config{Binary: bin, Certs: certs, Zones: zones})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// The final stage's instructions, continuation lines joined.
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	stages := strings.Split(text, "\nFROM ")
	got := map[string][]string{}
	var copies []string
	for line := range strings.SplitSeq(stages[len(stages)-1], "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		got[word] = append(got[word], rest)
		if word == "COPY" {
			copies = append(copies, rest)
		}
	}
	jsonArg := func(word string) []string {
		var v []string
		if len(got[word]) != 1 || json.Unmarshal([]byte(got[word][0]), &v) != nil {
			t.Errorf("Dockerfile %s %q: want one JSON array", word, got[word])
		}
		return v
	}
	if e := jsonArg("ENTRYPOINT"); !slices.Equal(e, cf.Config.Entrypoint) {
		t.Errorf("ENTRYPOINT %q, the tool's %q", e, cf.Config.Entrypoint)
	}
	if c := jsonArg("CMD"); !slices.Equal(c, cf.Config.Cmd) {
		t.Errorf("CMD %q, the tool's %q", c, cf.Config.Cmd)
	}
	if strings.Join(got["USER"], " ") != cf.Config.User || strings.Join(got["WORKDIR"], " ") != cf.Config.WorkingDir {
		t.Errorf("USER %q WORKDIR %q, the tool's %q %q", got["USER"], got["WORKDIR"], cf.Config.User, cf.Config.WorkingDir)
	}
	env := strings.Fields(strings.Join(got["ENV"], " "))
	slices.Sort(env)
	want := slices.Sorted(slices.Values(cf.Config.Env))
	if !slices.Equal(env, want) {
		t.Errorf("ENV %q, the tool's %q", env, want)
	}
	var ports []string
	for p := range cf.Config.ExposedPorts {
		ports = append(ports, strings.TrimSuffix(p, "/tcp"))
	}
	slices.Sort(ports)
	if e := strings.Fields(strings.Join(got["EXPOSE"], " ")); !slices.Equal(e, ports) {
		t.Errorf("EXPOSE %q, the tool's %q", e, ports)
	}
	for _, p := range []string{binaryPath, certsPath, zonesPath} {
		if !slices.ContainsFunc(copies, func(c string) bool { return strings.HasSuffix(c, " "+p) }) {
			t.Errorf("the Dockerfile copies nothing to %s", p)
		}
	}
	if !strings.Contains(text, "peakdesk:x:65532:65532:peakdesk:"+homePath) {
		t.Errorf("the Dockerfile's passwd has no user peakdesk 65532 at %s", homePath)
	}
}
