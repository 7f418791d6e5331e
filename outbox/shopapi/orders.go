package shopapi

import (
	"context"
	_ "embed"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// OpenAPI is the OpenAPI 3 document of every call peakdesk makes to a shop
// (orders, orders by user or tracking number, logistics, refunds, coupons,
// reply webhooks and their signature): what a shop implements. The
// simulated shop serves it at /openapi.yaml and is tested against it.
//
//go:embed openapi.yaml
var OpenAPI []byte

// MaxRecentOrders bounds the orders asked for by OrdersOfUser.
const MaxRecentOrders = 20

// Refund is one refund of an order, as GET /orders/{id}/refunds lists it.
type Refund struct {
	ID          string `json:"id"`
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency,omitempty"`
	// Status is requested, approved, processing, succeeded (the money is
	// back), rejected or canceled.
	Status    string    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// ExpectedAt is when the shop expects the money to be back, if it says.
	ExpectedAt *time.Time `json:"expected_at,omitempty"`
}

// orderList is the body of GET /orders.
type orderList struct {
	Orders []Order `json:"orders"`
}

// OrdersOfUser returns user's most recent orders at shop, newest first, at
// most limit of them (GET /orders?user_id=&limit=).
func (c *Client) OrdersOfUser(ctx context.Context, shop, user string, limit int) ([]Order, error) {
	limit = min(max(limit, 1), MaxRecentOrders)
	q := url.Values{"user_id": {user}, "limit": {strconv.Itoa(limit)}}
	return c.orders(ctx, shop, q)
}

// OrdersByTracking returns the orders whose parcel has tracking number
// trackingNo (GET /orders?tracking_no=): none, or usually one.
func (c *Client) OrdersByTracking(ctx context.Context, shop, trackingNo string) ([]Order, error) {
	return c.orders(ctx, shop, url.Values{"tracking_no": {trackingNo}})
}

func (c *Client) orders(ctx context.Context, shop string, q url.Values) ([]Order, error) {
	resp, err := c.api(ctx, shop, http.MethodGet, "/orders?"+q.Encode(), "", nil)
	if err != nil {
		return nil, err
	}
	var l orderList
	if err := resp.decode("orders", &l); err != nil {
		return nil, err
	}
	return l.Orders, nil
}

// refundList is the body of GET /orders/{id}/refunds.
type refundList struct {
	Refunds []Refund `json:"refunds"`
}

// Refunds returns the refunds of order id at shop, oldest first
// (GET /orders/{id}/refunds).
func (c *Client) Refunds(ctx context.Context, shop, id string) ([]Refund, error) {
	resp, err := c.api(ctx, shop, http.MethodGet, "/orders/"+url.PathEscape(id)+"/refunds", "", nil)
	if err != nil {
		return nil, err
	}
	var l refundList
	if err := resp.decode("refunds", &l); err != nil {
		return nil, err
	}
	return l.Refunds, nil
}
