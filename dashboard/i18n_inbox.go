package dashboard

// The inbox's texts (human takeover), kept apart from the rest of the
// console's and added to textEN and textZH when the package loads.
var (
	inboxEN = map[string]string{
		"nav.inbox": "Inbox", "inbox.title": "Inbox",
		"inbox.auto": "Conversations handed to a human, updated every few seconds. The most urgent and longest waiting come first.",
		"inbox.mine": "Assigned to you", "inbox.waiting": "Waiting for an agent",
		"inbox.none": "Nobody is waiting for an agent.", "inbox.nonemine": "No conversation is assigned to you.",
		"inbox.claim": "Claim", "inbox.open": "Open", "inbox.conv": "Conversation", "inbox.details": "all details",
		"inbox.send": "Send", "inbox.resolve": "Resolve", "inbox.handback": "Hand back to the bot",
		"inbox.placeholder": "Write to the customer…", "inbox.unanswered": "waiting for an answer",
		"inbox.lookonly": "Only agents and admins answer customers; you can look.",
		"col.waitprio":   "Priority", "col.waited": "Waiting", "col.withyou": "With you", "col.why": "Handed over because",
		"col.last": "Latest message", "col.pending": "Unanswered",
		"cstate.bot": "bot", "cstate.waiting_human": "waiting for an agent", "cstate.assigned": "with an agent",
		"cstate.resolved":       "resolved",
		"reason.customer_asked": "the customer asked", "reason.tool": "the assistant decided",
		"reason.policy": "a money policy refused", "reason.fallback": "the assistant could not answer",
		"reason.order_lookup": "order lookup failed", "reason.dead_letter": "a message could not be processed",
		"reason.agent_takeover": "an agent took over",
		"who.customer":          "customer %s", "who.bot": "bot (%s)", "who.agent": "agent %s",
		"src.llm": "model", "src.llm_secondary": "backup model", "src.faq": "FAQ", "src.handoff": "handoff",
		"src.cache": "cached answer", "src.followup": "follow-up", "src.order": "order data",
		"flash.claimed": "The conversation is yours.", "flash.replied": "Sent.",
		"flash.resolved":     "Resolved: the bot answers the customer's next message.",
		"flash.handedback":   "Handed back: the bot answers the customer again.",
		"flash.taken":        "Refused: the conversation is assigned to %s.",
		"flash.claimfirst":   "Claim the conversation before replying.",
		"flash.notwithagent": "Refused: the conversation is not with an agent (%s).",
		"flash.refused":      "Refused: another agent changed the conversation; look again.",
	}
	inboxZH = map[string]string{
		"nav.inbox": "待接待", "inbox.title": "待接待",
		"inbox.auto": "已转人工的会话，每隔几秒自动刷新；最紧急、等得最久的排在前面。",
		"inbox.mine": "我接待的", "inbox.waiting": "等待客服接入",
		"inbox.none": "没有等待人工的顾客。", "inbox.nonemine": "你还没有接待中的会话。",
		"inbox.claim": "接入", "inbox.open": "打开", "inbox.conv": "会话", "inbox.details": "全部详情",
		"inbox.send": "发送", "inbox.resolve": "结束会话", "inbox.handback": "交还机器人",
		"inbox.placeholder": "回复顾客……", "inbox.unanswered": "待回复",
		"inbox.lookonly": "只有客服和管理员可以回复顾客，你可以查看。",
		"col.waitprio":   "优先级", "col.waited": "已等待", "col.withyou": "接待时长", "col.why": "转人工原因",
		"col.last": "最新消息", "col.pending": "未回复",
		"cstate.bot": "机器人", "cstate.waiting_human": "等待客服", "cstate.assigned": "客服接待中",
		"cstate.resolved":       "已结束",
		"reason.customer_asked": "顾客要求人工", "reason.tool": "智能客服判断", "reason.policy": "金额策略拒绝",
		"reason.fallback": "智能客服无法回答", "reason.order_lookup": "订单查询失败", "reason.dead_letter": "消息无法处理",
		"reason.agent_takeover": "客服主动接入",
		"who.customer":          "顾客 %s", "who.bot": "机器人（%s）", "who.agent": "客服 %s",
		"src.llm": "大模型", "src.llm_secondary": "备用模型", "src.faq": "常见问题", "src.handoff": "转人工",
		"src.cache": "缓存答案", "src.followup": "跟进", "src.order": "订单数据",
		"flash.claimed": "已接入该会话。", "flash.replied": "已发送。",
		"flash.resolved":     "会话已结束：顾客的下一条消息由机器人回复。",
		"flash.handedback":   "已交还机器人：机器人继续回复顾客。",
		"flash.taken":        "操作被拒绝：该会话已由 %s 接待。",
		"flash.claimfirst":   "请先接入会话再回复。",
		"flash.notwithagent": "操作被拒绝：该会话当前不在客服手中（%s）。",
		"flash.refused":      "操作被拒绝：其他客服刚刚改动了该会话，请刷新后再看。",
	}
)

func init() {
	for k, v := range inboxEN {
		textEN[k] = v
	}
	for k, v := range inboxZH {
		textZH[k] = v
	}
}
