package loadtest

import (
	"fmt"
	mrand "math/rand/v2"
	"strings"
)

// Question kinds, as counted in the report.
const (
	loadKindHot    = "hot"    // identical general questions, the midnight rush
	loadKindOrder  = "order"  // order and logistics, with an order number
	loadKindRefund = "refund" // refund requests, with an order number
	loadKindChatZH = "chat_zh"
	loadKindChatEN = "chat_en"
)

// loadQuestion is the text of one offered message and its kind.
type loadQuestion struct {
	kind string
	text string
}

// loadHotQuestions are asked verbatim by many users at once, as at 00:00 on
// Double 11; the desk should answer them once (cache / coalescing).
var loadHotQuestions = []string{
	"双11满减怎么算？",
	"What is the Double 11 discount?",
	"双11什么时候发货？",
	"预售定金可以退吗？",
	"How do I use the Double 11 coupon?",
	"跨店满减可以和优惠券一起用吗？",
}

var loadOrderTemplates = []string{
	"我的订单%s到哪了？",
	"订单%s什么时候发货？",
	"快递怎么还没到，订单号%s",
	"订单号%s显示已签收但我没收到",
	"Where is my package? Order %s",
	"Has order %s shipped yet?",
	"Tracking for order %s please, it has not moved for two days",
}

var loadRefundTemplates = []string{
	"订单%s我要退款，商品有质量问题",
	"申请退款：订单%s，尺码不合适",
	"订单%s付款失败但钱被扣了，请退款",
	"I want a refund for order %s, the item arrived broken",
	"Please refund order %s, I was charged twice",
	"Refund request for order %s: wrong colour delivered",
}

// Parts of generated free text, so that chat messages vary like real ones.
var (
	loadZHProducts = []string{"羽绒服", "口红", "蓝牙耳机", "电饭煲", "跑步鞋", "扫地机器人", "面霜", "行李箱", "机械键盘", "婴儿奶粉"}
	loadZHOpeners  = []string{"你好，", "在吗？", "亲，", "请问", "客服你好，", ""}
	loadZHAsks     = []string{
		"这款%s有没有现货？",
		"%s有赠品吗？",
		"%s有大一号的吗？",
		"%s保修多久？",
		"%s和上一代有什么区别？",
		"%s双11比现在便宜吗？",
		"买两件%s能再便宜点吗？",
		"%s支持七天无理由退货吗？",
	}
	loadZHClosers   = []string{"", "谢谢", "急，在线等", "麻烦尽快回复", "😊"}
	loadENProducts  = []string{"down jacket", "lipstick", "wireless earbuds", "rice cooker", "running shoes", "robot vacuum", "face cream", "suitcase", "mechanical keyboard", "baby formula"}
	loadENOpeners   = []string{"Hi, ", "Hello! ", "Quick question: ", "Hey there, ", ""}
	loadENAsks      = []string{"is the %s in stock?", "does the %s come with a gift?", "do you have the %s in a larger size?", "how long is the warranty on the %s?", "will the %s be cheaper on Double 11?", "can I return the %s within seven days?", "what colours does the %s come in?"}
	loadENClosers   = []string{"", " Thanks!", " Please reply soon.", " Cheers"}
	loadKindWeights = []struct {
		kind string
		w    int
	}{{loadKindHot, 35}, {loadKindOrder, 25}, {loadKindRefund, 15}, {loadKindChatZH, 15}, {loadKindChatEN, 10}}
)

// loadNewQuestion draws one question: mostly hot questions, then order and
// logistics, refunds, and free text in Chinese and English.
func loadNewQuestion(rng *mrand.Rand) loadQuestion {
	total := 0
	for _, k := range loadKindWeights {
		total += k.w
	}
	x := rng.IntN(total)
	kind := loadKindHot
	for _, k := range loadKindWeights {
		if x < k.w {
			kind = k.kind
			break
		}
		x -= k.w
	}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	var text string
	switch kind {
	case loadKindHot:
		text = pick(loadHotQuestions)
	case loadKindOrder:
		text = fmt.Sprintf(pick(loadOrderTemplates), loadOrderNumber(rng))
	case loadKindRefund:
		text = fmt.Sprintf(pick(loadRefundTemplates), loadOrderNumber(rng))
	case loadKindChatZH:
		text = pick(loadZHOpeners) + fmt.Sprintf(pick(loadZHAsks), pick(loadZHProducts)) + pick(loadZHClosers)
	case loadKindChatEN:
		ask := fmt.Sprintf(pick(loadENAsks), pick(loadENProducts))
		opener := pick(loadENOpeners)
		if opener == "" {
			ask = strings.ToUpper(ask[:1]) + ask[1:]
		}
		text = opener + ask + pick(loadENClosers)
	}
	return loadQuestion{kind: kind, text: text}
}

// loadOrderNumber returns a 16-digit order number that fails the Luhn check,
// so PII masking never mistakes it for a bank card and the order-lookup cue
// still sees it.
func loadOrderNumber(rng *mrand.Rand) string {
	var b [16]byte
	copy(b[:], "2024")
	for i := 4; i < 16; i++ {
		b[i] = byte('0' + rng.IntN(10))
	}
	if loadLuhnValid(string(b[:])) {
		b[15] = '0' + (b[15]-'0'+1)%10 // any other check digit fails
	}
	return string(b[:])
}

// loadLuhnValid reports whether the digit string passes the Luhn check.
func loadLuhnValid(s string) bool {
	sum := 0
	double := false
	for i := len(s) - 1; i >= 0; i-- {
		d := int(s[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}
