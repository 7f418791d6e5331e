package faq_test

import (
	"context"
	"testing"
)

// BenchmarkSearch is one confident search of the demo FAQ: what the edge
// pays per shed message it answers from the FAQ.
func BenchmarkSearch(b *testing.B) {
	e, _ := setup(b)
	ctx := context.Background()
	qs := []string{"双11跨店满减能叠加吗", "拍下以后几天发货呀", "退款几天能到", "优惠券在哪里用", "我要投诉快递员态度差"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		e.Search(ctx, "s1", qs[i%len(qs)])
	}
}
