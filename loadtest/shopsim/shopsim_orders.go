package shopsim

import (
	"net/http"
	"strconv"
	"time"
)

// Order is an order in the simulated shop.
type Order struct {
	ID     string `json:"id"`
	Shop   string `json:"shop"`
	UserID string `json:"user_id"`
	// Status is paid, shipped, delivered or completed for catalogue orders.
	Status      string    `json:"status"`
	AmountCents int64     `json:"amount_cents"`
	Currency    string    `json:"currency"`
	Items       []Item    `json:"items"`
	Logistics   Logistics `json:"logistics"`
	CreatedAt   time.Time `json:"created_at"`
}

// ShopItem is one line of a Order.
type Item struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	Quantity   int    `json:"quantity"`
	PriceCents int64  `json:"price_cents"`
}

// ShopLogistics is where an order's parcel is.
type Logistics struct {
	Carrier    string `json:"carrier"`
	TrackingNo string `json:"tracking_no"`
	// Status is awaiting_shipment, in_transit or delivered for catalogue
	// orders.
	Status string `json:"status"`
	// ETA is when the carrier expects to deliver (parcels in transit).
	ETA    *time.Time       `json:"eta,omitempty"`
	Events []LogisticsEvent `json:"events"`
}

// ShopLogisticsEvent is one scan of a parcel.
type LogisticsEvent struct {
	At          time.Time `json:"at"`
	Status      string    `json:"status"`
	Location    string    `json:"location"`
	Description string    `json:"description"`
}

// shopLogisticsView is the body of GET /orders/{id}/logistics.
type shopLogisticsView struct {
	OrderID string `json:"order_id"`
	Logistics
}

// AddOrder adds or replaces an order (seed data). An order without a shop
// belongs to ShopDefaultShop. An added order's id is taken for every shop:
// other shops get 404 for it even when the catalogue would have it.
func (s *Sim) AddOrder(o Order) {
	if o.Shop == "" {
		o.Shop = DefaultShop
	}
	if o.Currency == "" {
		o.Currency = "CNY"
	}
	if o.Logistics.Events == nil {
		o.Logistics.Events = []LogisticsEvent{}
	}
	if o.Items == nil {
		o.Items = []Item{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.orders[o.ID] = o
}

// lookupOrderLocked finds order id for shop among added orders, then in the
// catalogue. s.mu must be held.
func (s *Sim) lookupOrderLocked(shop, id string) (Order, bool) {
	if o, ok := s.orders[id]; ok {
		return o, o.Shop == shop
	}
	return CatalogueOrder(shop, id)
}

func (s *Sim) lookupOrder(shop, id string) (Order, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupOrderLocked(shop, id)
}

// shopCatalogueEpoch is 2025-11-11 00:00 China time: every catalogue order
// is placed in the first hour of Double 11.
var shopCatalogueEpoch = time.Date(2025, 11, 10, 16, 0, 0, 0, time.UTC)

var shopCarriers = [...]struct{ name, prefix string }{
	{"SF Express", "SF"},
	{"ZTO Express", "ZTO"},
	{"JD Logistics", "JD"},
}

// CatalogueOrder returns the order the simulated shop's catalogue holds
// for id, so that load tests need no seeding. The rule, for every shop:
//
//   - id must be 6 to 32 ASCII digits; anything else is not in the catalogue.
//     Let n be the value of its last 9 digits.
//   - user_id is "u" followed by the id's last digit (order 1234567 → "u7").
//   - amount_cents is (n%1000 + 1) * 100, i.e. 1.00 to 1000.00 CNY, one item
//     "SKU-<last 4 digits>" of quantity 1 at that price.
//   - status is paid, shipped, delivered, completed for (n/10)%4 = 0..3;
//     logistics are awaiting_shipment (paid), in_transit (shipped) or
//     delivered, with carrier SF Express, ZTO Express, JD Logistics for
//     n%3 = 0..2 and tracking number carrier prefix + id.
//   - created_at is 2025-11-11 00:00 +08:00 plus n%3600 seconds.
//
// Customers' ids of 17 digits starting with 9 are the exception:
// "9" + 7 digits naming the customer + 9 more, and user_id is "u" + that
// number (see CustomerOrders, which lists them).
//
// Orders added with AddOrder take precedence (see there).
func CatalogueOrder(shop, id string) (Order, bool) {
	if len(id) < 6 || len(id) > 32 {
		return Order{}, false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return Order{}, false
		}
	}
	n, _ := strconv.ParseInt(id[max(0, len(id)-9):], 10, 64) // at most 9 digits: cannot fail
	user := "u" + id[len(id)-1:]
	if u, ok := customerOfID(id); ok {
		user = u
	}
	last4 := id[len(id)-4:]
	amount := (n%1000 + 1) * 100
	created := shopCatalogueEpoch.Add(time.Duration(n%3600) * time.Second)
	carrier := shopCarriers[n%3]

	o := Order{
		ID:          id,
		Shop:        shop,
		UserID:      user,
		AmountCents: amount,
		Currency:    "CNY",
		Items: []Item{{
			SKU:        "SKU-" + last4,
			Name:       "Item " + last4,
			Quantity:   1,
			PriceCents: amount,
		}},
		CreatedAt: created,
	}
	o.Logistics = Logistics{Carrier: carrier.name, Events: []LogisticsEvent{}}
	stage := (n / 10) % 4
	o.Status = [...]string{"paid", "shipped", "delivered", "completed"}[stage]
	if stage == 0 {
		o.Logistics.Status = "awaiting_shipment"
		return o, true
	}
	o.Logistics.TrackingNo = carrier.prefix + id
	o.Logistics.Status = "in_transit"
	eta := created.Add(72 * time.Hour)
	o.Logistics.ETA = &eta
	o.Logistics.Events = append(o.Logistics.Events,
		LogisticsEvent{At: created.Add(20 * time.Hour), Status: "picked_up", Location: "Hangzhou", Description: "Parcel picked up by " + carrier.name},
		LogisticsEvent{At: created.Add(30 * time.Hour), Status: "in_transit", Location: "Shanghai hub", Description: "Arrived at sorting centre"},
	)
	if stage >= 2 {
		o.Logistics.Status, o.Logistics.ETA = "delivered", nil
		o.Logistics.Events = append(o.Logistics.Events,
			LogisticsEvent{At: created.Add(44 * time.Hour), Status: "out_for_delivery", Location: "Shanghai", Description: "Out for delivery"},
			LogisticsEvent{At: created.Add(48 * time.Hour), Status: "delivered", Location: "Shanghai", Description: "Delivered, signed by customer"},
		)
	}
	return o, true
}

// getOrder serves GET /orders/{id}.
func (s *Sim) getOrder(w http.ResponseWriter, r *http.Request) {
	o, ok := s.serveLookup(w, r)
	if ok {
		shopWriteJSON(w, http.StatusOK, o)
	}
}

// getLogistics serves GET /orders/{id}/logistics.
func (s *Sim) getLogistics(w http.ResponseWriter, r *http.Request) {
	o, ok := s.serveLookup(w, r)
	if ok {
		shopWriteJSON(w, http.StatusOK, shopLogisticsView{OrderID: o.ID, Logistics: o.Logistics})
	}
}

// serveLookup injects faults and finds the request's order. When it returns
// false the response has been written (or the client is gone).
func (s *Sim) serveLookup(w http.ResponseWriter, r *http.Request) (Order, bool) {
	f := s.Faults()
	if s.injectDown(w, f) {
		return Order{}, false
	}
	if shopDelay(r.Context(), f) != nil {
		return Order{}, false
	}
	if s.injectError(w, f) {
		return Order{}, false
	}
	id := r.PathValue("id")
	o, ok := s.lookupOrder(shopOf(r), id)
	if !ok {
		shopWriteError(w, http.StatusNotFound, "not_found", "order "+id+" not found", "")
		return Order{}, false
	}
	return o, true
}
