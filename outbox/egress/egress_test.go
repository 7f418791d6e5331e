package egress_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/peakdesk/peakdesk/outbox/egress"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr string
		want egress.Class
	}{
		{"93.184.216.34", egress.Public},
		{"8.8.8.8", egress.Public},
		{"2606:4700::1111", egress.Public},
		{"100.63.255.255", egress.Public},
		{"100.128.0.0", egress.Public},
		{"172.32.0.1", egress.Public},
		{"64:ff9b::808:808", egress.Public}, // NAT64 of 8.8.8.8

		{"127.0.0.1", egress.Loopback},
		{"127.255.255.254", egress.Loopback},
		{"::1", egress.Loopback},
		{"::ffff:127.0.0.1", egress.Loopback}, // IPv4-mapped
		{"0.0.0.0", egress.Unspecified},
		{"::", egress.Unspecified},
		{"0.1.2.3", egress.Reserved},
		{"169.254.169.254", egress.LinkLocal}, // cloud metadata
		{"::ffff:169.254.169.254", egress.LinkLocal},
		{"169.254.0.1", egress.LinkLocal},
		{"fe80::1", egress.LinkLocal},
		{"10.0.0.1", egress.Private},
		{"172.16.0.1", egress.Private},
		{"172.31.255.255", egress.Private},
		{"192.168.1.1", egress.Private},
		{"::ffff:10.1.2.3", egress.Private},
		{"fc00::1", egress.Private},
		{"fd00:ec2::254", egress.Private}, // AWS metadata over IPv6
		{"fec0::1", egress.Private},
		{"64:ff9b:1::a00:1", egress.Private},
		{"100.64.0.1", egress.SharedNAT},
		{"100.127.255.255", egress.SharedNAT},
		{"::ffff:100.64.0.1", egress.SharedNAT},
		{"224.0.0.1", egress.Multicast},
		{"239.255.255.250", egress.Multicast},
		{"ff02::1", egress.Multicast},
		{"255.255.255.255", egress.Multicast},
		{"240.0.0.1", egress.Reserved},
		{"198.18.0.1", egress.Reserved},
		{"2001:db8::1", egress.Reserved},
		{"::127.0.0.1", egress.Reserved},         // deprecated IPv4-compatible
		{"64:ff9b::7f00:1", egress.Loopback},     // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", egress.LinkLocal}, // NAT64 of 169.254.169.254
		{"2002:a00:1::1", egress.Private},        // 6to4 of 10.0.0.1
		{"2002:5db8:d822::1", egress.Public},     // 6to4 of 93.184.216.34
	}
	for _, tc := range tests {
		if got := egress.Classify(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Classify(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if got := egress.Classify(netip.Addr{}); got != egress.Invalid {
		t.Errorf("Classify(zero) = %q, want invalid", got)
	}
}

func TestCheckURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url          string
		allowPrivate bool
		want         string // "" = allowed, else a part of the error
	}{
		{"https://shop.example.com/api", false, ""},
		{"https://shop.example.com:8443", false, ""},
		{"https://93.184.216.34/hooks", false, ""},
		{"http://127.0.0.1:8091", true, ""},
		{"https://localhost/x", true, ""},

		{"http://shop.example.com", false, "plain http is not allowed"},
		{"HTTP://shop.example.com", false, "plain http is not allowed"},
		{"ftp://shop.example.com", true, `scheme "ftp" is not allowed`},
		{"file:///etc/passwd", true, `scheme "file" is not allowed`},
		{"gopher://shop.example.com", false, `scheme "gopher"`},
		{"shop.example.com/api", true, "not absolute"},
		{"/relative", true, "not absolute"},
		{"https://", true, "no host"},
		{"https:shop.example.com", true, "no host"},
		{"https://user:pw@shop.example.com", true, "may not carry credentials"},
		{"https://shop.example.com:99999", true, "not within 1..65535"},
		{"https://shop.example.com:0", true, "not within 1..65535"},
		{"https://shop.example.com/%zz", true, "not a URL"},
		{"https://127.0.0.1/api", false, "127.0.0.1 is a loopback address"},
		{"https://[::1]:8443/", false, "::1 is a loopback address"},
		{"https://[::ffff:127.0.0.1]/", false, "is a loopback address"},
		{"https://169.254.169.254/latest/meta-data/", false, "169.254.169.254 is a link-local address (the cloud metadata service)"},
		{"https://10.1.2.3/", false, "10.1.2.3 is a private address"},
		{"https://100.64.1.1/", false, "100.64.1.1 is a carrier-grade NAT address"},
		{"https://0.0.0.0/", false, "0.0.0.0 is an unspecified address"},
		{"https://localhost:8443/", false, "localhost is a loopback name"},
		{"https://LOCALHOST./", false, "localhost is a loopback name"},
		{"https://api.localhost/", false, "api.localhost is a loopback name"},
	}
	for _, tc := range tests {
		err := egress.CheckURL(tc.url, tc.allowPrivate)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckURL(%q, %v) = %v, want allowed", tc.url, tc.allowPrivate, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckURL(%q, %v) = %v, want an error with %q", tc.url, tc.allowPrivate, err, tc.want)
		case err != nil:
			if _, ok := errors.AsType[*egress.RefusedError](err); !ok || !strings.HasPrefix(err.Error(), "shop url refused: ") {
				t.Errorf("CheckURL(%q): %T %v, want a *RefusedError", tc.url, err, err)
			}
		}
	}
}

// The dialer refuses what a name resolves to, at connect time: a URL check
// of the name alone cannot see it. "localhost" stands for any name whose
// DNS answer is (or is rebound to) a loopback address.
func TestClientRefusesPrivateAddressesAtConnectTime(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	t.Cleanup(srv.Close)
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]

	tests := []struct {
		name, url string
		class     egress.Class
		want      string
	}{
		{"loopback address", srv.URL, egress.Loopback, "127.0.0.1 is a loopback address"},
		{"name resolving to loopback", "http://localhost" + port, egress.Loopback, "is a loopback address"},
		{"metadata service", "http://169.254.169.254/latest/meta-data/", egress.LinkLocal, "(the cloud metadata service)"},
		{"private", "http://10.255.255.1/", egress.Private, "10.255.255.1 is a private address"},
		{"mapped loopback", "http://[::ffff:127.0.0.1]" + port, egress.Loopback, "is a loopback address"},
	}
	guarded := egress.NewClient(false)
	for _, tc := range tests {
		resp, err := guarded.Get(tc.url)
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: %s answered %d; want refused", tc.name, tc.url, resp.StatusCode)
			continue
		}
		re, ok := errors.AsType[*egress.RefusedError](err)
		if !ok || re.Class != tc.class || !strings.Contains(err.Error(), "shop url refused: ") ||
			!strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v (%+v), want %s refused with %q", tc.name, err, re, tc.class, tc.want)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the server was reached %d times", n)
	}

	// The same calls go through when private addresses are allowed: the
	// refusals above are the dialer's, not a broken setup.
	resp, err := egress.NewClient(true).Get("http://localhost" + port)
	if err != nil {
		t.Fatalf("allowed: %v", err)
	}
	resp.Body.Close()
	if hits.Load() != 1 {
		t.Errorf("allowed call: %d hits, want 1", hits.Load())
	}
}

// A redirect is handed back, never followed.
func TestClientDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	var targetHits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { targetHits.Add(1) }))
	t.Cleanup(target.Close)
	redirector := httptest.NewServer(http.RedirectHandler(target.URL+"/admin", http.StatusFound))
	t.Cleanup(redirector.Close)

	resp, err := egress.NewClient(true).Get(redirector.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || targetHits.Load() != 0 {
		t.Fatalf("status %d, target hit %d times; want the 302 itself and no hit", resp.StatusCode, targetHits.Load())
	}
	err = egress.Redirect(resp.StatusCode, resp.Header.Get("Location"))
	if re, ok := errors.AsType[*egress.RefusedError](err); !ok || re.Status != http.StatusFound ||
		!strings.Contains(err.Error(), "redirects are not followed") || !strings.Contains(err.Error(), target.URL) {
		t.Errorf("Redirect: %v", err)
	}
}
