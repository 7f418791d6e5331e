package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// An operator logs in with the right password only, lands on the overview
// as themself, and logs out; both are in the audit log.
func TestLoginShowsTheOverviewAndLogoutEndsTheSession(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	email := b.operator(t, storage.RoleOperator, "")
	c := b.client(t)

	if p := c.get("/console/outbox"); p.status != http.StatusSeeOther || !strings.HasPrefix(p.location, "/console/login") {
		t.Fatalf("anonymous outbox: %d %s", p.status, p.location)
	}
	if p := c.login(email, "wrong password"); p.status != http.StatusUnauthorized || !strings.Contains(p.body, "Wrong e-mail or password") {
		t.Fatalf("wrong password: %d\n%s", p.status, p.body)
	}
	if p := c.login("nobody@example.com", testPassword); p.status != http.StatusUnauthorized {
		t.Fatalf("unknown operator: %d", p.status)
	}
	p := c.login(email, testPassword)
	if p.status != http.StatusSeeOther || p.location != "/console/" {
		t.Fatalf("login: %d %s", p.status, p.location)
	}
	if p := c.get("/console/"); p.status != http.StatusOK || !strings.Contains(p.body, email) || !strings.Contains(p.body, `id="live"`) {
		t.Fatalf("overview: %d\n%s", p.status, p.body)
	}
	if len(b.audit(t, "console.login")) != 1 {
		t.Fatal("login not audited")
	}
	if p := c.post("/console/logout", nil); p.status != http.StatusSeeOther {
		t.Fatalf("logout: %d", p.status)
	}
	if p := c.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("after logout: %d", p.status)
	}
	if len(b.audit(t, "console.logout")) != 1 {
		t.Fatal("logout not audited")
	}
}

// More attempts than the limit for one e-mail address within its refill
// time (30 s at 2 a minute): the next is refused with a clear message,
// even with the right password.
func TestLoginIsRateLimitedPerEmail(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{loginPerEmail: 2})
	email := b.operator(t, storage.RoleViewer, "")
	c := b.client(t)
	for i := range 2 {
		if p := c.login(email, "guess "+strconv.Itoa(i)); p.status != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i+1, p.status)
		}
	}
	p := c.login(email, testPassword)
	if p.status != http.StatusTooManyRequests || !strings.Contains(p.body, "Too many login attempts. Try again in") {
		t.Fatalf("third attempt: %d\n%s", p.status, p.body)
	}
	// Another operator from elsewhere is not locked out by this one.
	other := b.operator(t, storage.RoleViewer, "")
	if p := b.client(t).login(other, testPassword); p.status != http.StatusSeeOther {
		t.Fatalf("other operator: %d", p.status)
	}
}

// One client trying many addresses is stopped by the per-IP limit.
func TestLoginIsRateLimitedPerIP(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{loginPerIP: 3})
	c := b.client(t)
	for i := range 3 {
		if p := c.login(fmt.Sprintf("guess-%d@example.com", i), "guess"); p.status != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i+1, p.status)
		}
	}
	if p := c.login("guess-4@example.com", "guess"); p.status != http.StatusTooManyRequests || p.header.Get("Retry-After") == "" {
		t.Fatalf("4th attempt from one IP: %d", p.status)
	}
}

// A session ends after the idle timeout without clicks (the overview's own
// polling does not keep it alive) and after the absolute lifetime however
// busy the operator is.
func TestSessionsEndWhenIdleAndAfterTheirLifetime(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{clock: true})
	c, _ := b.loggedIn(t, storage.RoleViewer, "")

	b.clock.Advance(29 * time.Minute)
	if p := c.get("/console/outbox"); p.status != http.StatusOK {
		t.Fatalf("after 29 idle minutes: %d", p.status)
	}
	// Polling for 31 minutes is not use.
	for range 31 {
		b.clock.Advance(time.Minute)
		if p := c.get("/console/overview/live", "HX-Request", "true"); p.status == http.StatusUnauthorized {
			if !strings.Contains(p.header.Get("HX-Redirect"), "expired=1") {
				t.Fatalf("after idling: %d %v", p.status, p.header)
			}
			if p := c.get("/console/outbox"); p.status != http.StatusSeeOther {
				t.Fatalf("after idling, a page: %d", p.status)
			}
			goto lifetime
		}
	}
	t.Fatal("polling kept the session alive past the idle timeout")

lifetime:
	c, _ = b.loggedIn(t, storage.RoleViewer, "")
	for i := range 12 * 3 {
		b.clock.Advance(20 * time.Minute)
		p := c.get("/console/outbox")
		if p.status == http.StatusSeeOther {
			if elapsed := time.Duration(i+1) * 20 * time.Minute; elapsed < 12*time.Hour {
				t.Fatalf("session ended after %v of use", elapsed)
			}
			return
		}
	}
	t.Fatal("session outlived its 12 h lifetime")
}

// A viewer sees the dead action but no button, and a retry POST is refused
// and changes nothing; an operator's retry works and is audited.
func TestViewerCannotRetryOperatorCan(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	id := b.seedActions(t, "demo", peakdesk.ActionRefundRequest, 1, peakdesk.ActionDead, "shop API timeout")[0]
	path := "/console/outbox/" + strconv.FormatInt(id, 10)

	viewer, _ := b.loggedIn(t, storage.RoleViewer, "")
	p := viewer.get(path)
	if p.status != http.StatusOK || !strings.Contains(p.body, "shop API timeout") || strings.Contains(p.body, `id="retry"`) {
		t.Fatalf("viewer's detail: %d, retry button shown: %v", p.status, strings.Contains(p.body, `id="retry"`))
	}
	if p := viewer.post(path+"/retry", nil); p.status != http.StatusForbidden {
		t.Fatalf("viewer's retry: %d", p.status)
	}
	if a := b.action(t, id); a.State != peakdesk.ActionDead || len(b.audit(t, "outbox.retry")) != 0 {
		t.Fatalf("after a viewer's retry: %s", a.State)
	}

	op, email := b.loggedIn(t, storage.RoleOperator, "")
	if p := op.get(path); !strings.Contains(p.body, `id="retry"`) {
		t.Fatal("operator sees no retry button")
	}
	if p := op.post(path+"/retry", nil); p.status != http.StatusSeeOther {
		t.Fatalf("operator's retry: %d", p.status)
	}
	if a := b.action(t, id); a.State != peakdesk.ActionPending {
		t.Fatalf("after retry: %s", a.State)
	}
	audit := b.audit(t, "outbox.retry")
	if len(audit) != 1 || audit[0].Actor != email || audit[0].Target != "action:"+strconv.FormatInt(id, 10) {
		t.Fatalf("audit: %+v", audit)
	}
	if p := op.get(path); !strings.Contains(p.body, fmt.Sprintf("Action #%d is due again.", id)) {
		t.Fatal("no confirmation after retry")
	}
}

// A shop's operator sees and touches only that shop: lists, details,
// conversations, dead letters and bulk operations.
func TestShopOperatorSeesOnlyItsShop(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	mine := b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 3, peakdesk.ActionDead, "coupon service down")
	theirs := b.seedActions(t, "other", peakdesk.ActionCouponIssue, 3, peakdesk.ActionDead, "coupon service down")
	c, _ := b.loggedIn(t, storage.RoleOperator, "demo")

	for _, path := range []string{"/console/outbox", "/console/outbox?shop=other", "/console/outbox?q=coupon"} {
		p := c.get(path)
		if p.status != http.StatusOK {
			t.Fatalf("%s: %d", path, p.status)
		}
		for _, id := range theirs {
			if strings.Contains(p.body, fmt.Sprintf(`data-action="%d"`, id)) {
				t.Fatalf("%s shows other shop's action %d", path, id)
			}
		}
		if !strings.Contains(p.body, fmt.Sprintf(`data-action="%d"`, mine[0])) {
			t.Fatalf("%s misses own action", path)
		}
	}
	if p := c.get("/console/outbox/" + strconv.FormatInt(theirs[0], 10)); p.status != http.StatusNotFound {
		t.Fatalf("other shop's action: %d", p.status)
	}
	if p := c.post("/console/outbox/"+strconv.FormatInt(theirs[0], 10)+"/retry", nil); p.status != http.StatusNotFound {
		t.Fatalf("retry of other shop's action: %d", p.status)
	}
	if p := c.get("/console/outbox/bulk?op=retry&state=dead"); !strings.Contains(p.body, "Retry 3 dead actions?") {
		t.Fatalf("bulk count is not the shop's: %s", p.body)
	}
	if p := c.post("/console/outbox/bulk", url.Values{"op": {"retry"}, "state": {"dead"}, "shop": {"other"}}); !strings.Contains(p.body, "3 actions retried.") {
		t.Fatalf("bulk: %d %s", p.status, p.body)
	}
	for _, id := range theirs {
		if a := b.action(t, id); a.State != peakdesk.ActionDead {
			t.Fatalf("other shop's action %d is %s", id, a.State)
		}
	}
	if p := c.get("/console/conversations?q=" + strings.Repeat("c", 32)); strings.Contains(p.body, "other") && p.status == http.StatusOK && strings.Contains(p.body, "<td>other</td>") {
		t.Fatal("conversation search shows another shop")
	}
}

// A state-changing request from another origin is refused before it acts,
// even with a valid session cookie.
func TestCrossOriginPostIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	id := b.seedActions(t, "demo", peakdesk.ActionRefundRequest, 1, peakdesk.ActionDead, "timeout")[0]
	c, _ := b.loggedIn(t, storage.RoleAdmin, "")
	path := "/console/outbox/" + strconv.FormatInt(id, 10) + "/retry"
	for _, h := range [][]string{
		{"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"},
		{"Origin", "http://127.0.0.1:1", "Sec-Fetch-Site", "same-site"},
	} {
		p := c.post(path, nil, h...)
		if p.status != http.StatusForbidden || !strings.Contains(p.body, "cross-site request forgery") {
			t.Fatalf("%v: %d %s", h, p.status, p.body)
		}
	}
	if a := b.action(t, id); a.State != peakdesk.ActionDead {
		t.Fatalf("a refused retry acted: %s", a.State)
	}
}

// A bulk retry confirms the count of every match of the filter (not a
// page), acts on all of them and leaves the rest alone.
func TestBulkRetryConfirmsTheCountAndActsOnEveryMatch(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	refunds := b.seedActions(t, "demo", peakdesk.ActionRefundRequest, 120, peakdesk.ActionDead, "gateway timeout")
	coupons := b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 7, peakdesk.ActionDead, "gateway timeout")
	c, email := b.loggedIn(t, storage.RoleOperator, "")

	q := "op=retry&state=dead&kind=refund.request&q=gateway"
	p := c.get("/console/outbox/bulk?" + q)
	if !strings.Contains(p.body, "Retry 120 dead refund.request actions?") {
		t.Fatalf("confirmation: %s", p.body)
	}
	p = c.post("/console/outbox/bulk", url.Values{"op": {"retry"}, "state": {"dead"}, "kind": {"refund.request"}, "q": {"gateway"}})
	if p.status != http.StatusOK || !strings.Contains(p.body, "120 actions retried.") || !strings.Contains(p.body, `id="progress-pending">120<`) {
		t.Fatalf("bulk: %d %s", p.status, p.body)
	}
	for _, id := range refunds {
		if a := b.action(t, id); a.State != peakdesk.ActionPending {
			t.Fatalf("refund %d is %s", id, a.State)
		}
	}
	for _, id := range coupons {
		if a := b.action(t, id); a.State != peakdesk.ActionDead {
			t.Fatalf("coupon %d is %s", id, a.State)
		}
	}
	audit := b.audit(t, "outbox.bulk_retry")
	if len(audit) != 1 || audit[0].Actor != email || !strings.Contains(string(audit[0].Details), `"affected": 120`) {
		t.Fatalf("audit: %+v %s", audit, audit[0].Details)
	}
	// The live panel counts the actions it retried, not every refund: one
	// that comes later is not among them.
	b.seedActions(t, "demo", peakdesk.ActionRefundRequest, 1, peakdesk.ActionPending, "")
	progress := fmt.Sprintf("/console/outbox/progress?bulk=%d", audit[0].ID)
	if !strings.Contains(p.body, `hx-get="`+progress+`"`) {
		t.Fatalf("the panel does not poll %s: %s", progress, p.body)
	}
	if p := c.get(progress, "HX-Request", "true"); p.status != http.StatusOK || !strings.Contains(p.body, `id="progress-pending">120<`) {
		t.Fatalf("progress: %d %s", p.status, p.body)
	}
	for _, bad := range []string{"x", "0", strconv.FormatInt(audit[0].ID+1000, 10)} {
		if p := c.get("/console/outbox/progress?bulk="+bad, "HX-Request", "true"); p.status != http.StatusNotFound {
			t.Fatalf("progress of bulk operation %q: %d", bad, p.status)
		}
	}
	// Another shop's operator does not see it.
	other, _ := b.loggedIn(t, storage.RoleOperator, "other")
	if p := other.get(progress, "HX-Request", "true"); p.status != http.StatusNotFound {
		t.Fatalf("progress of a platform bulk operation seen by another shop's operator: %d %s", p.status, p.body)
	}
	// Without a filter nothing is offered and nothing happens.
	if p := c.get("/console/outbox/bulk?op=retry"); p.status != http.StatusBadRequest {
		t.Fatalf("bulk without a filter: %d", p.status)
	}
}

// The time range filter narrows the list.
func TestOutboxTimeRangeFilter(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	ids := b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 2, peakdesk.ActionDead, "late")
	if _, err := b.conn.Exec(context.Background(), `UPDATE outbox_actions SET created_at = '2025-11-11 00:30+08' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	c, _ := b.loggedIn(t, storage.RoleViewer, "")
	p := c.get("/console/outbox?from=2025-11-11T00%3A00&to=2025-11-11T01%3A00")
	if !strings.Contains(p.body, fmt.Sprintf(`data-action="%d"`, ids[0])) || strings.Contains(p.body, fmt.Sprintf(`data-action="%d"`, ids[1])) {
		t.Fatalf("time range: %s", p.body)
	}
}
