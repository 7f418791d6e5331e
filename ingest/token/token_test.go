package token

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

var testSecret = []byte("token-test-secret-0123456789abcdef0123456")

func authRequest(tok string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

func authCode(a *Authenticator, tok string) string {
	_, err := a.Authenticate(authRequest(tok))
	return peakdesk.ErrorCode(err)
}

// Rotating a shop key gives the shop a new kid; tokens of the old one work
// until its not_after (the overlap), then are refused — also those the
// authenticator has cached — and a key expired in the database is refused
// once the cache reads it again.
func TestShopKeyRotationOverlap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.DB(t)
	if err := db.EnsureShop(ctx, "shop1", "shop1"); err != nil {
		t.Fatal(err)
	}
	clock := storagetest.NewClock()
	auth, err := NewShopAuthenticator(Config{Secret: testSecret, DB: db, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	k1, err := ShopSigningKey(ctx, db, "shop1")
	if err != nil {
		t.Fatal(err)
	}
	oldTok, _ := SignWithShopKey(k1, "alice", nil, 24*time.Hour)
	if code := authCode(auth, oldTok); code != "" {
		t.Fatalf("token of the current key: %s", code)
	}
	k2, err := RotateShopKey(ctx, db, "shop1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if k2.KID == k1.KID || k2.ShopID != "shop1" {
		t.Fatalf("rotated key %v after %v", k2, k1)
	}
	if cur, _ := ShopSigningKey(ctx, db, "shop1"); cur.KID != k2.KID {
		t.Fatalf("current key %s after rotation, want %s", cur.KID, k2.KID)
	}
	newTok, _ := SignWithShopKey(k2, "alice", nil, 24*time.Hour)

	// Within the overlap, both work (the old key read again meanwhile).
	clock.Advance(30 * time.Minute)
	for name, tok := range map[string]string{"old": oldTok, "new": newTok} {
		if code := authCode(auth, tok); code != "" {
			t.Errorf("%s key's token within the overlap: %s", name, code)
		}
	}
	// Past the old key's not_after: its tokens are refused, the cached one
	// and a fresh one alike.
	clock.Advance(31 * time.Minute)
	freshOld, _ := SignWithShopKey(k1, "bob", nil, 24*time.Hour)
	for name, tok := range map[string]string{"cached": oldTok, "fresh": freshOld} {
		if code := authCode(auth, tok); code != peakdesk.EUnauthenticated {
			t.Errorf("%s token of the old key after its not_after: %q, want unauthenticated", name, code)
		}
	}
	if code := authCode(auth, newTok); code != "" {
		t.Errorf("new key's token: %s", code)
	}

	// An operator expires the new key in Postgres: refused once the cache
	// reads the key again (KeyRefresh), not before.
	if err := db.ExpireShopKey(ctx, "shop1", k2.KID, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if code := authCode(auth, newTok); code != "" {
		t.Errorf("within KeyRefresh the cached key still counts: %s", code)
	}
	clock.Advance(6 * time.Second)
	if code := authCode(auth, newTok); code != peakdesk.EUnauthenticated {
		t.Errorf("token of a key expired in the database: %q, want unauthenticated", code)
	}
}

// Concurrent first uses of a kid read it from Postgres once, and a made-up
// kid is read once and then remembered as unknown.
func TestShopKeyLoadsAreCoalescedAndCached(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.DB(t)
	if err := db.EnsureShop(ctx, "shop1", "shop1"); err != nil {
		t.Fatal(err)
	}
	auth, err := NewShopAuthenticator(Config{Secret: testSecret, DB: db})
	if err != nil {
		t.Fatal(err)
	}
	k, err := ShopSigningKey(ctx, db, "shop1")
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	for i := range 50 {
		s, _ := SignWithShopKey(k, fmt.Sprintf("user-%d", i), nil, time.Hour)
		tokens = append(tokens, s)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range tokens {
		wg.Go(func() {
			<-start
			if code := authCode(auth, s); code != "" {
				t.Errorf("concurrent first use: %s", code)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := auth.keyReads.Load(); n != 1 {
		t.Errorf("50 concurrent first uses read the key %d times, want 1", n)
	}
	for i := range 20 {
		garbage, _ := signToken([]byte("whatever-secret"), "ffffffffffffffffffffffff", "shop1", fmt.Sprint("u", i), nil, time.Hour)
		if code := authCode(auth, garbage); code != peakdesk.EUnauthenticated {
			t.Fatalf("unknown kid: %q", code)
		}
	}
	if n := auth.keyReads.Load(); n != 2 {
		t.Errorf("20 tokens of one unknown kid read Postgres %d more times, want 1", n-1)
	}
}
