package shopsim

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
)

// Customers of the catalogue: every user id "u<n>" (n a number of at most
// 7 digits, no leading zero) has n%4 recent orders, so a test or a load
// test can pick a customer with none, one or several:
//
//   - n%4 = 0: no orders;
//   - n%4 = 1: one order, shipped (in transit);
//   - n%4 = 2: two, a completed one and a newer shipped one (one open);
//   - n%4 = 3: three, completed, paid and shipped, newest last (two open).
//
// Their ids are "9" + n in 7 digits + 9 digits that give the stage (see
// CatalogueOrder), so CatalogueOrder finds each of them for its customer.
// GET /orders?user_id= lists them (and the orders added for the user),
// newest first.

// customerOfID returns the customer a "9"-prefixed 17-digit catalogue id
// belongs to.
func customerOfID(id string) (string, bool) {
	if len(id) != 17 || id[0] != '9' {
		return "", false
	}
	n, err := strconv.Atoi(id[1:8])
	if err != nil {
		return "", false
	}
	return "u" + strconv.Itoa(n), true
}

// customerNumber returns n of a user id "u<n>".
func customerNumber(user string) (int, bool) {
	digits, ok := strings.CutPrefix(user, "u")
	if !ok || digits == "" || len(digits) > 7 || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil && n >= 0
}

// customerStages are the stages (0 paid, 1 shipped, 3 completed) of the
// orders of a customer with n%4 = k orders, oldest first.
var customerStages = [4][]int{nil, {1}, {3, 1}, {3, 0, 1}}

// CustomerOrderIDs returns the catalogue's order ids of user, oldest first
// (none for a user id that is not "u<n>").
func CustomerOrderIDs(user string) []string {
	n, ok := customerNumber(user)
	if !ok {
		return nil
	}
	var ids []string
	for j, stage := range customerStages[n%4] {
		// The last 9 digits: j·1000 (later orders are newer) + stage·10
		// (CatalogueOrder's stage) + a check digit chosen so the id fails
		// Luhn: personal-data masking must not take it for a bank card.
		base := fmt.Sprintf("9%07d%09d", n, j*1000+stage*10)
		for c := range 10 {
			id := base[:16] + strconv.Itoa(c)
			if !luhnValid(id) {
				ids = append(ids, id)
				break
			}
		}
	}
	return ids
}

func luhnValid(s string) bool {
	sum, double := 0, false
	for i := len(s) - 1; i >= 0; i-- {
		d := int(s[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// listOrders serves GET /orders?user_id=&limit= and GET /orders?tracking_no=.
func (s *Sim) listOrders(w http.ResponseWriter, r *http.Request) {
	f := s.Faults()
	if s.injectDown(w, f) {
		return
	}
	if shopDelay(r.Context(), f) != nil {
		return
	}
	if s.injectError(w, f) {
		return
	}
	q := r.URL.Query()
	user, tracking := q.Get("user_id"), q.Get("tracking_no")
	if (user == "") == (tracking == "") {
		shopWriteError(w, http.StatusBadRequest, "invalid_argument", "give exactly one of user_id and tracking_no", "user_id")
		return
	}
	limit := 5
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > shopapi.MaxRecentOrders {
			shopWriteError(w, http.StatusBadRequest, "invalid_argument", "limit must be 1..20", "limit")
			return
		}
		limit = n
	}
	shop := shopOf(r)
	var out []Order
	if user != "" {
		out = s.ordersOfUser(shop, user)
		out = out[:min(len(out), limit)]
	} else if o, ok := s.orderByTracking(shop, tracking); ok {
		out = []Order{o}
	}
	if out == nil {
		out = []Order{}
	}
	shopWriteJSON(w, http.StatusOK, map[string][]Order{"orders": out})
}

// ordersOfUser returns user's orders at shop, newest first: those added
// for them and the catalogue's.
func (s *Sim) ordersOfUser(shop, user string) []Order {
	s.mu.Lock()
	var out []Order
	seen := map[string]bool{}
	for _, o := range s.orders {
		if o.Shop == shop && o.UserID == user {
			out = append(out, o)
			seen[o.ID] = true
		}
	}
	for _, id := range CustomerOrderIDs(user) {
		if !seen[id] {
			if o, ok := s.lookupOrderLocked(shop, id); ok && o.UserID == user {
				out = append(out, o)
			}
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Order) int {
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), strings.Compare(b.ID, a.ID))
	})
	return out
}

// orderByTracking finds the order whose parcel has tracking number t: an
// added order, or the catalogue's (carrier prefix + order id).
func (s *Sim) orderByTracking(shop, t string) (Order, bool) {
	s.mu.Lock()
	for _, o := range s.orders {
		if o.Shop == shop && o.Logistics.TrackingNo != "" && o.Logistics.TrackingNo == t {
			s.mu.Unlock()
			return o, true
		}
	}
	s.mu.Unlock()
	for _, c := range shopCarriers {
		if id, ok := strings.CutPrefix(t, c.prefix); ok {
			if o, ok := s.lookupOrder(shop, id); ok && o.Logistics.TrackingNo == t {
				return o, true
			}
		}
	}
	return Order{}, false
}

// refundDelay is how long after its request the simulated shop expects a
// refund's money back.
const refundDelay = 72 * time.Hour

// listRefunds serves GET /orders/{id}/refunds: the refunds requested of the
// order (POST /refunds), oldest first.
func (s *Sim) listRefunds(w http.ResponseWriter, r *http.Request) {
	o, ok := s.serveLookup(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	out := slices.Clone(s.refunds[shopKey{shopOf(r), o.ID}])
	s.mu.Unlock()
	if out == nil {
		out = []shopRefund{}
	}
	shopWriteJSON(w, http.StatusOK, map[string][]shopRefund{"refunds": out})
}

// AddRefund records a refund of an order (seed data), as if it had been
// requested with POST /refunds; an empty Status is "processing".
func (s *Sim) AddRefund(shop, orderID string, amountCents int64, status string, createdAt time.Time) {
	shop = cmp.Or(shop, DefaultShop)
	s.mu.Lock()
	defer s.mu.Unlock()
	expected := createdAt.Add(refundDelay)
	k := shopKey{shop, orderID}
	s.refunds[k] = append(s.refunds[k], shopRefund{ID: s.nextIDLocked("re", shopKindRefund), Object: "refund",
		Shop: shop, OrderID: orderID, AmountCents: amountCents, Currency: "CNY", Status: cmp.Or(status, "processing"),
		CreatedAt: createdAt.UTC(), ExpectedAt: &expected})
}

// getOpenAPI serves the shop API's OpenAPI document.
func (s *Sim) getOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(shopapi.OpenAPI)
}
