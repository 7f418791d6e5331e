// Package egress guards peakdesk's outbound calls to shops against
// server-side request forgery. A shop chooses the URLs peakdesk calls (its
// API and its reply webhook), so whoever controls a shop's settings could
// aim them at peakdesk's own network: the cloud metadata service, a database
// or an admin port on loopback.
//
// The rules: a shop URL must be https; the address a call connects to must
// be public — checked in the dialer on the resolved address at connect time,
// so a name that resolves (or re-resolves, DNS rebinding) to a private
// address is refused too; no proxy sits between (it would dial where we
// cannot check); redirects are never followed. AllowPrivate lifts the first
// two rules for development and tests, whose shops run on loopback.
package egress

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Class names why an address may not be connected to.
type Class string

// Classes of refused addresses. Public is the empty class: allowed.
const (
	Public      Class = ""
	Unspecified Class = "unspecified"
	Loopback    Class = "loopback"
	LinkLocal   Class = "link-local"
	Private     Class = "private"
	Multicast   Class = "multicast"
	SharedNAT   Class = "carrier-grade NAT"
	Reserved    Class = "reserved"
	Invalid     Class = "invalid"
)

// metadataAddr is the cloud metadata service (AWS, GCP, Azure, Alibaba…).
var metadataAddr = netip.MustParseAddr("169.254.169.254")

// reserved are the ranges the standard library's predicates do not cover.
var reserved = []struct {
	prefix netip.Prefix
	class  Class
}{
	{netip.MustParsePrefix("0.0.0.0/8"), Reserved},      // "this network"; 0.x reaches the host itself on Linux
	{netip.MustParsePrefix("100.64.0.0/10"), SharedNAT}, // RFC 6598 shared address space
	{netip.MustParsePrefix("192.0.0.0/24"), Reserved},   // IETF protocol assignments
	{netip.MustParsePrefix("198.18.0.0/15"), Reserved},  // benchmarking
	{netip.MustParsePrefix("240.0.0.0/4"), Reserved},    // future use, and the broadcast address
	{netip.MustParsePrefix("64:ff9b:1::/48"), Private},  // local-use NAT64 (RFC 8215)
	{netip.MustParsePrefix("100::/64"), Reserved},       // discard-only
	{netip.MustParsePrefix("2001:db8::/32"), Reserved},  // documentation
	{netip.MustParsePrefix("::/96"), Reserved},          // deprecated IPv4-compatible
	{netip.MustParsePrefix("fec0::/10"), Private},       // deprecated site-local
}

// Addresses that carry an IPv4 address inside an IPv6 one: a gateway turns
// them into the IPv4 destination, which must be allowed itself.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Classify returns why a may not be connected to, or Public. An IPv4 address
// mapped into IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address, and so
// are NAT64 and 6to4 addresses by the IPv4 address they carry.
func Classify(a netip.Addr) Class {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return Invalid
	case a.IsUnspecified():
		return Unspecified
	case a.IsLoopback():
		return Loopback
	case a.IsLinkLocalUnicast():
		return LinkLocal
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return Multicast
	case a.IsPrivate():
		return Private
	}
	for _, r := range reserved {
		if r.prefix.Contains(a) {
			return r.class
		}
	}
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return Classify(netip.AddrFrom4([4]byte(b[12:16])))
	case sixToFour.Contains(a):
		return Classify(netip.AddrFrom4([4]byte(b[2:6])))
	}
	return Public
}

// RefusedError is a call to a shop that egress refused: a URL that is not
// allowed, an address that is not public, or a redirect. It can never
// succeed by trying again.
type RefusedError struct {
	// Reason says what was refused and why, e.g. "127.0.0.1 is a loopback
	// address".
	Reason string
	// Class is set when an address was refused.
	Class Class
	// Status is the HTTP status of a refused answer (a redirect), else 0.
	Status int
}

// Error implements error.
func (e *RefusedError) Error() string { return "shop url refused: " + e.Reason }

func refuseAddr(a netip.Addr) error {
	c := Classify(a)
	if c == Public {
		return nil
	}
	article := "a"
	if strings.ContainsAny(string(c[:1]), "aeiou") {
		article = "an"
	}
	reason := fmt.Sprintf("%s is %s %s address", a, article, c)
	if a.Unmap() == metadataAddr {
		reason += " (the cloud metadata service)"
	}
	return &RefusedError{Reason: reason, Class: c}
}

// Control refuses a connection to an address that is not public. It is a
// net.Dialer's Control function, so it sees the address actually dialled,
// after name resolution.
func Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &RefusedError{Reason: fmt.Sprintf("cannot check the %s address %q", network, address), Class: Invalid}
	}
	return refuseAddr(ap.Addr())
}

// CheckURL reports whether raw may be called: an absolute https URL with a
// host and no credentials in it. With allowPrivate, plain http is allowed
// too; without it, a host that is an address or a name that is not public
// (an IP literal, localhost) is refused at once. The error is a
// *RefusedError. Whatever a name resolves to is checked later, at connect
// time.
func CheckURL(raw string, allowPrivate bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return &RefusedError{Reason: "not a URL: " + strings.TrimPrefix(err.Error(), "parse ")}
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowPrivate:
	case u.Scheme == "http":
		return &RefusedError{Reason: "plain http is not allowed, use https (PEAKDESK_ALLOW_PRIVATE_SHOP_URLS=true allows it in development)"}
	case u.Scheme == "":
		return &RefusedError{Reason: "the URL is not absolute (want https://host/…)"}
	default:
		return &RefusedError{Reason: fmt.Sprintf("scheme %q is not allowed, use https", u.Scheme)}
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return &RefusedError{Reason: "the URL has no host (want https://host/…)"}
	}
	if u.User != nil {
		return &RefusedError{Reason: "the URL may not carry credentials (user:password@); the shop API secret is sent as a bearer token"}
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return &RefusedError{Reason: fmt.Sprintf("port %q is not within 1..65535", p)}
		}
	}
	if allowPrivate {
		return nil
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return &RefusedError{Reason: host + " is a loopback name", Class: Loopback}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return refuseAddr(a)
	}
	return nil
}

// Redirect is the refusal of an answer with a 3xx status: redirects are
// never followed, since the next hop could be anywhere, and the request may
// have had an effect at the shop already (303 See Other), so it is not sent
// again elsewhere either.
func Redirect(status int, location string) error {
	if len(location) > 200 {
		location = location[:200] + "…"
	}
	return &RefusedError{Status: status,
		Reason: fmt.Sprintf("the shop answered %d redirecting to %q; redirects are not followed", status, location)}
}

// NewClient returns an HTTP client for calls to shops: no proxy, redirects
// returned instead of followed (see Redirect), and unless allowPrivate a
// dialer that connects to public addresses only (Control). Check the URL
// with CheckURL before each call.
func NewClient(allowPrivate bool) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		d.Control = Control
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = d.DialContext
	t.MaxIdleConnsPerHost = 128
	return &http.Client{
		Transport: t,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
