package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// k8sDocs decodes every document of a deploy/k8s file of the given kind.
func k8sDocs[T any](t *testing.T, file, kind string) []*T {
	t.Helper()
	b, err := os.ReadFile("../../deploy/k8s/" + file)
	if err != nil {
		t.Fatal(err)
	}
	var out []*T
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var meta struct{ Kind string }
		if yaml.Unmarshal([]byte(doc), &meta) != nil || meta.Kind != kind {
			continue
		}
		v := new(T)
		if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out = append(out, v)
	}
	return out
}

// deploy/k8s/config.yaml, with the Secret's keys (secrets.example.yaml) and
// each Deployment's own env and args, passes that role's configuration
// validation: a setting a role requires cannot be missing from the
// manifests (PEAKDESK_SHOP_API_URL once was), and every variable the
// manifests set is one the config reader reads (no misspelt names).
func TestK8sConfigPassesEachRolesValidation(t *testing.T) {
	t.Parallel()
	env := map[string]string{}
	for _, cm := range k8sDocs[corev1.ConfigMap](t, "config.yaml", "ConfigMap") {
		for k, v := range cm.Data {
			env[k] = v
		}
	}
	secret := map[string]string{}
	for _, s := range k8sDocs[corev1.Secret](t, "secrets.example.yaml", "Secret") {
		if s.Name == "peakdesk" {
			secret = s.StringData
		}
	}
	if len(env) == 0 || len(secret) == 0 {
		t.Fatal("no ConfigMap or Secret peakdesk")
	}
	var roles []string
	for _, file := range []string{"ingest.yaml", "worker.yaml", "relay.yaml", "dashboard.yaml"} {
		for _, d := range k8sDocs[appsv1.Deployment](t, file, "Deployment") {
			c := d.Spec.Template.Spec.Containers[0]
			podEnv := map[string]string{}
			for _, ef := range c.EnvFrom {
				switch {
				case ef.ConfigMapRef != nil && ef.ConfigMapRef.Name == "peakdesk":
					for k, v := range env {
						podEnv[k] = v
					}
				case ef.SecretRef != nil && ef.SecretRef.Name == "peakdesk":
					for k, v := range secret {
						podEnv[k] = v
					}
				}
			}
			for _, e := range c.Env {
				podEnv[e.Name] = e.Value
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "peakdesk" {
					podEnv[e.Name] = secret[e.ValueFrom.SecretKeyRef.Key]
				}
			}
			if len(c.Args) < 1 || c.Args[0] != "serve" {
				t.Fatalf("%s: args %q", d.Name, c.Args)
			}
			read := map[string]bool{}
			getenv := func(k string) string { read[k] = true; return podEnv[k] }
			cfg, err := parseFlags("serve", c.Args[1:], io.Discard, getenv, false)
			if err != nil {
				t.Errorf("%s (%s): %v", d.Name, strings.Join(c.Args, " "), err)
				continue
			}
			// Every name the pod is given is one the config reader reads: a
			// misspelt setting would otherwise be silently ignored.
			for k := range podEnv {
				if !read[k] {
					t.Errorf("%s: %s is not a setting peakdesk reads", d.Name, k)
				}
			}
			roles = append(roles, cfg.Roles...)
			if cfg.NATSCreds == "" || cfg.NATSCA == "" || cfg.NATSTopology != topologyCheck || cfg.StreamReplicas != 3 {
				t.Errorf("%s: NATS creds %q, CA %q, topology %q, replicas %d", d.Name, cfg.NATSCreds, cfg.NATSCA,
					cfg.NATSTopology, cfg.StreamReplicas)
			}
		}
	}
	if strings.Join(roles, ",") != "ingest,worker,relay,dashboard" {
		t.Errorf("roles validated: %v", roles)
	}
}
