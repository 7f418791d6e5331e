package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/storage"
)

const testKeySecret = "0123456789abcdef0123456789abcdef-secret"

// A shop's first key is created once; rotation makes a new current key and
// gives the older ones a not_after of at most the overlap; keys are the
// shop's alone.
func TestShopKeyRotation(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	k1, err := db.EnsureShopKey(ctx, "shop1", "kid-one-0001", testKeySecret)
	if err != nil || k1.KID != "kid-one-0001" || k1.ShopID != "shop1" || k1.NotAfter != nil {
		t.Fatalf("first key: %+v %v", k1, err)
	}
	if again, err := db.EnsureShopKey(ctx, "shop1", "kid-unused-01", testKeySecret); err != nil || again.KID != k1.KID {
		t.Fatalf("EnsureShopKey again: %+v %v, want the first key", again, err)
	}
	if _, err := db.EnsureShopKey(ctx, "nosuchshop", "kid-none-0001", testKeySecret); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("key of a missing shop: %v, want ErrNotFound", err)
	}

	before := time.Now()
	k2, err := db.RotateShopKey(ctx, "shop1", "kid-two-0002", testKeySecret, time.Hour)
	if err != nil || k2.NotAfter != nil {
		t.Fatalf("rotate: %+v %v", k2, err)
	}
	old, err := db.ShopKeyByID(ctx, k1.KID)
	if err != nil || old.NotAfter == nil {
		t.Fatalf("old key after rotation: %+v %v", old, err)
	}
	if d := old.NotAfter.Sub(before); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("old key's not_after %v after the rotation, want about 1h", d)
	}
	if !old.ValidAt(time.Now()) || old.ValidAt(time.Now().Add(2*time.Hour)) {
		t.Error("ValidAt disagrees with not_after")
	}
	// A rotation with a longer overlap never extends an earlier not_after;
	// overlap 0 revokes every older key at once.
	if _, err := db.RotateShopKey(ctx, "shop1", "kid-three-003", testKeySecret, 48*time.Hour); err != nil {
		t.Fatal(err)
	}
	if again, _ := db.ShopKeyByID(ctx, k1.KID); !again.NotAfter.Equal(*old.NotAfter) {
		t.Errorf("not_after moved from %v to %v", old.NotAfter, again.NotAfter)
	}
	if _, err := db.RotateShopKey(ctx, "shop1", "kid-four-0004", testKeySecret, 0); err != nil {
		t.Fatal(err)
	}
	for _, kid := range []string{k1.KID, k2.KID, "kid-three-003"} {
		if k, _ := db.ShopKeyByID(ctx, kid); k.ValidAt(time.Now().Add(time.Second)) {
			t.Errorf("key %s still valid after a rotation with overlap 0", kid)
		}
	}
	if cur, err := db.EnsureShopKey(ctx, "shop1", "kid-unused-02", testKeySecret); err != nil || cur.KID != "kid-four-0004" {
		t.Errorf("current key %+v %v, want kid-four-0004", cur, err)
	}
	// Keys are per shop.
	if err := db.ExpireShopKey(ctx, "shop2", "kid-four-0004", time.Now()); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("another shop expired shop1's key: %v", err)
	}
	if _, err := db.RotateShopKey(ctx, "nosuchshop", "kid-none-0002", testKeySecret, time.Hour); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("rotate a missing shop: %v, want ErrNotFound", err)
	}
	if _, err := db.ShopKeyByID(ctx, "kid-missing-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("missing kid: %v", err)
	}
}

// Concurrent rotations leave exactly one current key.
func TestConcurrentRotationsLeaveOneCurrentKey(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if _, err := db.RotateShopKey(ctx, "shop1", fmt.Sprintf("kid-race-%04d", i), testKeySecret, time.Hour); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	current := 0
	for i := range 8 {
		if k, err := db.ShopKeyByID(ctx, fmt.Sprintf("kid-race-%04d", i)); err == nil && k.NotAfter == nil {
			current++
		}
	}
	if current != 1 {
		t.Errorf("%d current keys after concurrent rotations, want 1", current)
	}
}

func TestShopEdgeLimits(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	s, err := db.ShopSettings(ctx, "shop1")
	if err != nil || s.EdgeLimits != storage.DefaultEdgeLimits {
		t.Fatalf("a new shop's edge limits: %+v %v, want %+v", s.EdgeLimits, err, storage.DefaultEdgeLimits)
	}
	want := storage.EdgeLimits{P0PerUserPerHour: 0, ReadPerUserPerMinute: 30, SSEStreamsPerUser: 2}
	if err := db.SetShopEdgeLimits(ctx, "shop1", want); err != nil {
		t.Fatal(err)
	}
	if s, _ := db.ShopSettings(ctx, "shop1"); s.EdgeLimits != want {
		t.Errorf("edge limits %+v, want %+v", s.EdgeLimits, want)
	}
	for _, bad := range []storage.EdgeLimits{
		{P0PerUserPerHour: -1, ReadPerUserPerMinute: 1},
		{ReadPerUserPerMinute: 0},
		{ReadPerUserPerMinute: 1, SSEStreamsPerUser: -1},
	} {
		if err := db.SetShopEdgeLimits(ctx, "shop1", bad); err == nil {
			t.Errorf("limits %+v accepted", bad)
		}
	}
	if err := db.SetShopEdgeLimits(ctx, "nosuchshop", want); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("missing shop: %v", err)
	}
}
