// Package k8s holds peakdesk's Kubernetes manifests; its test checks that
// they apply: every object decodes strictly into the Kubernetes API types.
package k8s

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization this directory
// uses; a field it does not know fails the strict decoding.
type kustomization struct {
	APIVersion         string   `json:"apiVersion"`
	Kind               string   `json:"kind"`
	Namespace          string   `json:"namespace"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// scaledObject mirrors KEDA's keda.sh/v1alpha1 ScaledObject (KEDA's API
// reference). KEDA's own Go types pull in client-go and controller-runtime
// (over 800 packages), too much for one test; this mirror is decoded
// strictly like the Kubernetes types, so a misspelt or misplaced field
// fails, and the nats-jetstream trigger's metadata is checked against the
// scaler's parameters (a plain map to the API server, so nothing else
// would catch a typo there).
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion             string `json:"apiVersion,omitempty"`
			Kind                   string `json:"kind,omitempty"`
			Name                   string `json:"name"`
			EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
		} `json:"scaleTargetRef"`
		PollingInterval       *int32 `json:"pollingInterval,omitempty"`
		InitialCooldownPeriod *int32 `json:"initialCooldownPeriod,omitempty"`
		CooldownPeriod        *int32 `json:"cooldownPeriod,omitempty"`
		IdleReplicaCount      *int32 `json:"idleReplicaCount,omitempty"`
		MinReplicaCount       *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount       *int32 `json:"maxReplicaCount,omitempty"`
		Advanced              *struct {
			RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
			HorizontalPodAutoscalerConfig *struct {
				Name     string                                         `json:"name,omitempty"`
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Fallback *struct {
			FailureThreshold int32 `json:"failureThreshold"`
			Replicas         int32 `json:"replicas"`
		} `json:"fallback,omitempty"`
		Triggers []struct {
			Type              string            `json:"type"`
			Name              string            `json:"name,omitempty"`
			UseCachedMetrics  bool              `json:"useCachedMetrics,omitempty"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
				Kind string `json:"kind,omitempty"`
			} `json:"authenticationRef,omitempty"`
			MetricType string `json:"metricType,omitempty"`
		} `json:"triggers"`
	} `json:"spec"`
}

// natsJetStreamParams are the nats-jetstream scaler's metadata keys.
var natsJetStreamParams = []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer",
	"lagThreshold", "activationLagThreshold", "useHttps"}

// objects of every resource file, by kind.
type objects struct {
	deployments  []*appsv1.Deployment
	statefulSets []*appsv1.StatefulSet
	jobs         []*batchv1.Job
	services     []*corev1.Service
	configMaps   []*corev1.ConfigMap
	pdbs         []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	scaled       []*scaledObject
	namespaces   []*corev1.Namespace
}

func (o *objects) decode(t *testing.T, file string, doc []byte) {
	t.Helper()
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		v := &appsv1.Deployment{}
		o.deployments, obj = append(o.deployments, v), v
	case "apps/v1 StatefulSet":
		v := &appsv1.StatefulSet{}
		o.statefulSets, obj = append(o.statefulSets, v), v
	case "batch/v1 Job":
		v := &batchv1.Job{}
		o.jobs, obj = append(o.jobs, v), v
	case "v1 Service":
		v := &corev1.Service{}
		o.services, obj = append(o.services, v), v
	case "v1 ConfigMap":
		v := &corev1.ConfigMap{}
		o.configMaps, obj = append(o.configMaps, v), v
	case "v1 Namespace":
		v := &corev1.Namespace{}
		o.namespaces, obj = append(o.namespaces, v), v
	case "policy/v1 PodDisruptionBudget":
		v := &policyv1.PodDisruptionBudget{}
		o.pdbs, obj = append(o.pdbs, v), v
	case "networking.k8s.io/v1 NetworkPolicy":
		v := &networkingv1.NetworkPolicy{}
		o.policies, obj = append(o.policies, v), v
	case "autoscaling/v2 HorizontalPodAutoscaler":
		v := &autoscalingv2.HorizontalPodAutoscaler{}
		o.hpas, obj = append(o.hpas, v), v
	case "keda.sh/v1alpha1 ScaledObject":
		v := &scaledObject{}
		o.scaled, obj = append(o.scaled, v), v
	case "v1 Secret":
		t.Errorf("%s: a Secret with values in the applied manifests; name it by reference instead", file)
		return
	default:
		t.Errorf("%s: unexpected object %s %s", file, tm.APIVersion, tm.Kind)
		return
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Errorf("%s: %s: %v", file, tm.Kind, err)
	}
}

// splitDocs splits a multi-document YAML file.
func splitDocs(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func load(t *testing.T) (*kustomization, *objects) {
	t.Helper()
	raw, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(raw, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	o := &objects{}
	for _, f := range k.Resources {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("kustomization.yaml names %s: %v", f, err)
		}
		for _, doc := range splitDocs(b) {
			o.decode(t, f, doc)
		}
	}
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("configMapGenerator %s: %v", g.Name, err)
			}
		}
		o.configMaps = append(o.configMaps, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: g.Name}})
	}
	return &k, o
}

// The manifests apply: every object of kustomization.yaml decodes strictly
// into the Kubernetes API types (an unknown or misplaced field fails), and
// each workload has what running it at midnight needs: probes, resource
// requests and a memory limit, a PodDisruptionBudget, a NetworkPolicy,
// non-root pods, secrets only by reference, the schema wait before start,
// and the KEDA rule within the provider's budget.
func TestManifestsApply(t *testing.T) {
	k, o := load(t)
	if k.Namespace != "peakdesk" || len(o.namespaces) != 1 {
		t.Errorf("namespace %q, %d Namespace objects", k.Namespace, len(o.namespaces))
	}
	configMaps := map[string]bool{"nats-users": true} // made by the operator (secrets.example.yaml)
	for _, c := range o.configMaps {
		configMaps[c.Name] = true
	}
	type workload struct {
		name   string
		labels map[string]string
		spec   corev1.PodSpec
	}
	var workloads []workload
	for _, d := range o.deployments {
		workloads = append(workloads, workload{d.Name, d.Spec.Template.Labels, d.Spec.Template.Spec})
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("%s: its selector does not match its pods", d.Name)
		}
	}
	for _, s := range o.statefulSets {
		workloads = append(workloads, workload{s.Name, s.Spec.Template.Labels, s.Spec.Template.Spec})
	}
	for _, w := range workloads {
		for _, c := range append(slices.Clone(w.spec.InitContainers), w.spec.Containers...) {
			init := slices.ContainsFunc(w.spec.InitContainers, func(i corev1.Container) bool { return i.Name == c.Name })
			if !init && (c.ReadinessProbe == nil || c.LivenessProbe == nil) {
				t.Errorf("%s/%s: no readiness or liveness probe", w.name, c.Name)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s/%s: resources %v: want cpu and memory requests and a memory limit", w.name, c.Name, c.Resources)
			}
			for _, e := range c.Env {
				if regexp.MustCompile(`SECRET|PASSWORD|API_KEY|DATABASE_URL|MASTER_KEY`).MatchString(e.Name) && e.Value != "" {
					t.Errorf("%s/%s: %s has a literal value; take it from a Secret", w.name, c.Name, e.Name)
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && !configMaps[ef.ConfigMapRef.Name] {
					t.Errorf("%s/%s: ConfigMap %s is not defined", w.name, c.Name, ef.ConfigMapRef.Name)
				}
			}
		}
		if !slices.ContainsFunc(o.pdbs, func(p *policyv1.PodDisruptionBudget) bool {
			sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
			return err == nil && sel.Matches(labels.Set(w.labels))
		}) {
			t.Errorf("%s: no PodDisruptionBudget covers its pods", w.name)
		}
		if !slices.ContainsFunc(o.policies, func(p *networkingv1.NetworkPolicy) bool {
			sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
			return err == nil && !sel.Empty() && sel.Matches(labels.Set(w.labels))
		}) {
			t.Errorf("%s: no NetworkPolicy lets anything reach its pods", w.name)
		}
	}

	// peakdesk's own pods: non-root, the schema wait, the role's NATS user.
	roles := map[string]bool{}
	for _, d := range o.deployments {
		spec := d.Spec.Template.Spec
		c := spec.Containers[0]
		if len(c.Args) != 3 || c.Args[0] != "serve" || c.Args[1] != "--roles" {
			t.Errorf("%s: args %q, want serve --roles <role>", d.Name, c.Args)
			continue
		}
		role := c.Args[2]
		roles[role] = true
		if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Errorf("%s: pods may run as root", d.Name)
		}
		if len(spec.InitContainers) != 1 || strings.Join(spec.InitContainers[0].Args, " ") != "migrate --wait 10m" {
			t.Errorf("%s: no init container waiting for the schema (peakdesk migrate --wait)", d.Name)
		}
		if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool {
			return v.Secret != nil && v.Secret.SecretName == "nats-user-"+role
		}) {
			t.Errorf("%s: does not mount its NATS user's Secret nats-user-%s", d.Name, role)
		}
	}
	for _, r := range []string{"ingest", "worker", "relay", "dashboard"} {
		if !roles[r] {
			t.Errorf("no Deployment runs role %s", r)
		}
	}
	if !slices.ContainsFunc(o.services, func(s *corev1.Service) bool { return s.Name == "peakdesk-dashboard" }) {
		t.Error("no Service for the dashboard")
	}
	if len(o.jobs) != 1 || strings.Join(o.jobs[0].Spec.Template.Spec.Containers[0].Args, " ") != "migrate" {
		t.Error("no migrate Job")
	}

	// KEDA: the worker Deployment, one nats-jetstream trigger per worker
	// consumer in the PEAKDESK account, and no more pods than the
	// provider's budget can use.
	if len(o.scaled) != 1 {
		t.Fatalf("%d ScaledObjects, want 1", len(o.scaled))
	}
	so := o.scaled[0]
	if so.Spec.ScaleTargetRef.Name != "peakdesk-worker" {
		t.Errorf("ScaledObject scales %q", so.Spec.ScaleTargetRef.Name)
	}
	var consumers []string
	for _, tr := range so.Spec.Triggers {
		if tr.Type != "nats-jetstream" {
			t.Errorf("trigger type %q", tr.Type)
		}
		for key := range tr.Metadata {
			if !slices.Contains(natsJetStreamParams, key) {
				t.Errorf("nats-jetstream trigger: unknown parameter %q", key)
			}
		}
		if tr.Metadata["account"] != "PEAKDESK" || tr.Metadata["stream"] != "CHAT_IN" {
			t.Errorf("trigger reads account %q stream %q", tr.Metadata["account"], tr.Metadata["stream"])
		}
		if n, err := strconv.Atoi(tr.Metadata["lagThreshold"]); err != nil || n < 1 {
			t.Errorf("lagThreshold %q", tr.Metadata["lagThreshold"])
		}
		consumers = append(consumers, tr.Metadata["consumer"])
	}
	slices.Sort(consumers)
	if fmt.Sprint(consumers) != "[workers-p0 workers-p1 workers-p2]" {
		t.Errorf("triggers follow %v", consumers)
	}
	cfg := configData(t)
	rpm, _ := strconv.Atoi(cfg["PEAKDESK_LLM_RPM"])
	conc, _ := strconv.Atoi(cfg["PEAKDESK_WORKER_CONCURRENCY"])
	// Pods worth running at 2 s calls, with half again of headroom.
	useful := float64(rpm) / 60 * 2 / float64(conc) * 1.5
	if max := float64(*so.Spec.MaxReplicaCount); conc == 0 || max > useful+1 || max < useful/2 {
		t.Errorf("maxReplicaCount %.0f: the provider's %d RPM keeps about %.0f pods of %d calls busy", max, rpm, useful, conc)
	}
}

// configData is the peakdesk ConfigMap of config.yaml.
func configData(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range splitDocs(b) {
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict(doc, &cm); err == nil && cm.Name == "peakdesk" {
			return cm.Data
		}
	}
	t.Fatal("config.yaml has no ConfigMap peakdesk")
	return nil
}

// A strict decoder is what makes the test above able to fail.
func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	doc := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 3\n")
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(doc, &d); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Errorf("a misspelt field decoded: %v", err)
	}
}

// prometheusRule mirrors the Prometheus Operator's monitoring.coreos.com/v1
// PrometheusRule, strictly like the rest.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name     string `json:"name"`
			Interval string `json:"interval,omitempty"`
			Rules    []struct {
				Alert       string            `json:"alert,omitempty"`
				Record      string            `json:"record,omitempty"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// Every YAML file here is checked: those kustomization.yaml applies by
// TestManifestsApply, and the ones applied apart — secrets.example.yaml
// (the Secrets to create; TestK8sConfigPassesEachRolesValidation reads its
// keys) and alerts.yaml (needs the Prometheus Operator) — decode strictly
// here. A new file nobody checks fails.
func TestEveryYAMLFileIsChecked(t *testing.T) {
	k, _ := load(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f == "kustomization.yaml" || slices.Contains(k.Resources, f) {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range splitDocs(b) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var obj any
			switch {
			case f == "secrets.example.yaml" && tm.APIVersion == "v1" && tm.Kind == "Secret":
				obj = &corev1.Secret{}
			case f == "alerts.yaml" && tm.APIVersion == "monitoring.coreos.com/v1" && tm.Kind == "PrometheusRule":
				obj = &prometheusRule{}
			default:
				t.Errorf("%s: %s %s is neither applied by kustomization.yaml nor checked here", f, tm.APIVersion, tm.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s: %s: %v", f, tm.Kind, err)
			}
			if r, ok := obj.(*prometheusRule); ok {
				if len(r.Spec.Groups) == 0 {
					t.Errorf("%s: no rule groups", f)
				}
				for _, g := range r.Spec.Groups {
					for _, rule := range g.Rules {
						if (rule.Alert == "") == (rule.Record == "") || rule.Expr == "" {
							t.Errorf("%s: rule %q/%q: want an alert or a record, and an expr", f, rule.Alert, rule.Record)
						}
					}
				}
			}
		}
	}
}
