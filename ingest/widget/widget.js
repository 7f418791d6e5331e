/*! peakdesk chat widget: plain JavaScript, no framework.
 *
 * <script src="https://desk.example.com/widget.js" data-token-url="/peakdesk/token" async></script>
 *
 * data-token-url  (required) a URL of the shop's own backend that answers
 *                 {"token": "<customer JWT>"} for the signed-in customer
 *                 (fetched with the page's cookies).
 * data-lang       "zh" or "en" (default: the browser's language).
 * data-title      the panel's title.
 * data-open       "true" opens the panel on load.
 *
 * Messages are sent with an Idempotency-Key made when the customer presses
 * send, so a double click or a retry never sends twice. Replies come over
 * one event stream per customer (GET /v1/events), opened with a short-lived
 * stream token (the customer's token never goes into a URL); on a drop it
 * reconnects with the last event id, and reply ids already shown are never
 * shown again.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__peakdeskWidget) return;
  window.__peakdeskWidget = true;

  var API = new URL(script.src, location.href).origin;
  var TOKEN_URL = script.getAttribute("data-token-url");
  var lang = (script.getAttribute("data-lang") || navigator.language || "en").toLowerCase().indexOf("zh") === 0 ? "zh" : "en";
  var TEXT = {
    zh: {
      title: "在线客服", open: "打开客服对话", close: "关闭", send: "发送", placeholder: "输入您的问题…",
      queued: "排队中", answering: "正在回答…", answered: "已回答", sending: "发送中…", failed: "发送失败，点此重试",
      handoff: "已为您转接人工客服", agent: "人工客服", bot: "智能客服", offline: "连接中断，正在重连…",
      limited: "发送太频繁，请稍后再试", noToken: "无法登录客服，请刷新页面", empty: "您好！有什么可以帮您？",
      you: "我"
    },
    en: {
      title: "Customer service", open: "Open the chat", close: "Close", send: "Send", placeholder: "Type your question…",
      queued: "Queued", answering: "Answering…", answered: "Answered", sending: "Sending…", failed: "Not sent — tap to retry",
      handoff: "A human agent will take over", agent: "Agent", bot: "Assistant", offline: "Connection lost, reconnecting…",
      limited: "Too many messages, please wait a moment", noToken: "Cannot sign in to the chat; reload the page", empty: "Hello! How can we help?",
      you: "You"
    }
  }[lang];
  var title = script.getAttribute("data-title") || TEXT.title;

  // Kept per API and page origin, so a reload shows the same conversation
  // and resumes the stream where it stopped.
  var STORE = "peakdesk:" + API;
  var state = load() || { conv: "", last: "", items: [] };
  var seen = {}; // reply ids shown
  state.items.forEach(function (it) { if (it.reply) seen[it.reply] = true; });

  function load() {
    try { return JSON.parse(localStorage.getItem(STORE)); } catch (e) { return null; }
  }
  function save() {
    try {
      state.items = state.items.slice(-100);
      localStorage.setItem(STORE, JSON.stringify({
        conv: state.conv, last: state.last,
        items: state.items.filter(function (it) { return !it.partial && !it.hello; })
      }));
    } catch (e) { /* private mode: the page still works */ }
  }

  // --- DOM ---------------------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  var css = el("link");
  css.rel = "stylesheet";
  css.href = API + "/widget.css";
  document.head.appendChild(css);

  var root = el("div", "pdw");
  root.setAttribute("lang", lang === "zh" ? "zh-CN" : "en");
  var launcher = el("button", "pdw-launcher");
  launcher.type = "button";
  launcher.setAttribute("aria-label", TEXT.open);
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-controls", "pdw-panel");
  launcher.innerHTML = '<svg viewBox="0 0 24 24" width="28" height="28" aria-hidden="true"><path fill="currentColor" d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"/></svg>';
  var panel = el("section", "pdw-panel");
  panel.id = "pdw-panel";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  panel.hidden = true;
  var head = el("header", "pdw-head");
  head.appendChild(el("h2", "pdw-title", title));
  var closeBtn = el("button", "pdw-close", "×");
  closeBtn.type = "button";
  closeBtn.setAttribute("aria-label", TEXT.close);
  head.appendChild(closeBtn);
  var banner = el("div", "pdw-banner");
  banner.setAttribute("role", "status");
  banner.hidden = true;
  var log = el("div", "pdw-log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.tabIndex = 0;
  var form = el("form", "pdw-form");
  var input = el("textarea", "pdw-input");
  input.rows = 1;
  input.maxLength = 2000;
  input.placeholder = TEXT.placeholder;
  input.setAttribute("aria-label", TEXT.placeholder);
  var sendBtn = el("button", "pdw-send", TEXT.send);
  sendBtn.type = "submit";
  form.appendChild(input);
  form.appendChild(sendBtn);
  panel.appendChild(head);
  panel.appendChild(banner);
  panel.appendChild(log);
  panel.appendChild(form);
  root.appendChild(panel);
  root.appendChild(launcher);

  var nodes = {}; // item key → element
  function render(it) {
    var node = nodes[it.key];
    if (!node) {
      node = el("div");
      nodes[it.key] = node;
      log.appendChild(node);
    }
    node.className = "pdw-msg pdw-" + it.kind;
    node.textContent = "";
    if (it.reply) node.setAttribute("data-reply-id", it.reply);
    if (it.kind !== "mine" && it.kind !== "notice") {
      node.appendChild(el("span", "pdw-who", it.kind === "agent" ? TEXT.agent : TEXT.bot));
    }
    node.appendChild(el("div", "pdw-text", it.text));
    if (it.kind === "mine" && it.status) {
      var st = el(it.status === "failed" ? "button" : "span", "pdw-status pdw-" + it.status, TEXT[it.status]);
      if (it.status === "failed") {
        st.type = "button";
        st.onclick = function () { deliver(it); };
      }
      node.setAttribute("data-status", it.status);
      node.appendChild(st);
    }
    log.scrollTop = log.scrollHeight;
  }
  function add(it) {
    state.items.push(it);
    if (!it.partial) save();
    render(it);
    return it;
  }
  function drop(key) {
    var node = nodes[key];
    if (node) node.remove();
    delete nodes[key];
    state.items = state.items.filter(function (it) { return it.key !== key; });
  }
  function setBanner(text) {
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function openPanel(focus) {
    panel.hidden = false;
    root.classList.add("pdw-is-open");
    launcher.setAttribute("aria-expanded", "true");
    if (!log.childNodes.length && !state.items.length) add({ key: "hello", kind: "bot", text: TEXT.empty, hello: true });
    if (focus) input.focus();
    connect();
  }
  function closePanel() {
    panel.hidden = true;
    root.classList.remove("pdw-is-open");
    launcher.setAttribute("aria-expanded", "false");
    launcher.focus();
  }
  launcher.onclick = function () { panel.hidden ? openPanel(true) : closePanel(); };
  closeBtn.onclick = closePanel;
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") closePanel();
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.onsubmit(e);
    }
  });

  // --- API ---------------------------------------------------------------
  var token = "";
  function getToken(fresh) {
    if (token && !fresh) return Promise.resolve(token);
    return fetch(TOKEN_URL, { credentials: "include" }).then(function (r) {
      if (!r.ok) throw new Error("token " + r.status);
      return r.json();
    }).then(function (j) {
      token = j.token;
      return token;
    });
  }
  // api calls the chat API with the customer's token, getting a new one once
  // on 401.
  function api(method, path, body, headers, retried) {
    return getToken(retried).then(function (tok) {
      var h = { Authorization: "Bearer " + tok };
      if (body) h["Content-Type"] = "application/json";
      for (var k in headers || {}) h[k] = headers[k];
      return fetch(API + path, { method: method, headers: h, body: body ? JSON.stringify(body) : undefined });
    }).then(function (r) {
      if (r.status === 401 && !retried) return api(method, path, body, headers, true);
      return r;
    });
  }
  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  // deliver sends a message, again and again with the same key until the
  // edge has it: a repeat returns the first result, never a second message.
  function deliver(it, attempt) {
    attempt = attempt || 0;
    it.status = "sending";
    render(it);
    var body = { text: it.text };
    if (state.conv) body.conversation_id = state.conv;
    api("POST", "/v1/messages", body, { "Idempotency-Key": it.idem }).then(function (r) {
      return r.json().then(function (j) { return { r: r, j: j }; });
    }).then(function (res) {
      if (res.r.status === 200 || res.r.status === 202) {
        state.conv = res.j.conversation_id;
        it.msg = res.j.message_id;
        it.status = res.j.status === "answered" ? "answered" : "queued";
        save();
        render(it);
        if (res.j.reply) onReply(null, res.j.reply);
        return;
      }
      if (res.r.status === 429 || res.r.status === 503) {
        var wait = (parseInt(res.r.headers.get("Retry-After"), 10) || 2) * 1000;
        if (res.r.status === 429) setBanner(TEXT.limited);
        return retry(it, attempt, wait);
      }
      it.status = "failed";
      render(it);
    }).catch(function () {
      retry(it, attempt, 1000 * Math.min(8, Math.pow(2, attempt)));
    });
  }
  function retry(it, attempt, wait) {
    if (attempt >= 5) {
      it.status = "failed";
      render(it);
      return;
    }
    setTimeout(function () { deliver(it, attempt + 1); }, wait);
  }
  form.onsubmit = function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text || sendBtn.disabled) return;
    input.value = "";
    // The key is made once, here: every retry of this message reuses it.
    var it = add({ key: "m" + newKey(), kind: "mine", text: text, idem: newKey(), status: "sending" });
    sendBtn.disabled = true;
    setTimeout(function () { sendBtn.disabled = false; }, 300);
    deliver(it);
  };

  function mineFor(ids) {
    return state.items.filter(function (it) { return it.kind === "mine" && it.msg && ids.indexOf(it.msg) >= 0; });
  }

  function onReply(id, r) {
    if (id) state.last = id;
    if (!r || seen[r.reply_id]) {
      save();
      return;
    }
    seen[r.reply_id] = true;
    var ids = r.message_ids || [];
    drop("p" + (ids[0] || r.conversation_id));
    mineFor(ids).forEach(function (it) { it.status = "answered"; render(it); });
    var kind = r.source === "handoff" ? "handoff" : r.source === "agent" ? "agent" : "bot";
    if (r.source === "handoff") add({ key: "n" + r.reply_id, kind: "notice", text: TEXT.handoff });
    add({ key: "r" + r.reply_id, kind: kind, text: r.text, reply: r.reply_id });
    setBanner("");
  }
  function onPartial(p) {
    var ids = p.message_ids || [];
    var key = "p" + (ids[0] || p.conversation_id);
    mineFor(ids).forEach(function (it) {
      if (it.status !== "answering") { it.status = "answering"; render(it); }
    });
    var it = state.items.filter(function (x) { return x.key === key; })[0];
    if (!it) add({ key: key, kind: "bot pdw-partial", text: p.text, partial: true });
    else { it.text = p.text; render(it); }
  }

  // --- the event stream ----------------------------------------------------
  var es = null, connecting = false, backoff = 0, reopenTimer = 0;
  function connect() {
    if (es || connecting) return;
    connecting = true;
    api("POST", "/v1/stream-tokens").then(function (r) {
      if (!r.ok) throw new Error("stream token " + r.status);
      return r.json();
    }).then(function (j) {
      var url = API + "/v1/events?stream_token=" + encodeURIComponent(j.stream_token);
      if (state.last) url += "&last_event_id=" + encodeURIComponent(state.last);
      es = new EventSource(url);
      connecting = false;
      es.addEventListener("open", function () { backoff = 0; setBanner(""); });
      es.addEventListener("reply", function (e) {
        var r;
        try { r = JSON.parse(e.data); } catch (err) { return; }
        onReply(e.lastEventId, r);
      });
      es.addEventListener("partial", function (e) {
        try { onPartial(JSON.parse(e.data)); } catch (err) { /* ignore */ }
      });
      es.onerror = function () {
        setBanner(TEXT.offline);
        // The browser retries by itself (with Last-Event-ID) while the stream
        // token is good; once it gives up, open anew with a fresh one.
        if (es && es.readyState === EventSource.CLOSED) reopen();
      };
    }).catch(function () {
      connecting = false;
      setBanner(TEXT.offline);
      reopen();
    });
  }
  function reopen() {
    if (es) { es.close(); es = null; }
    clearTimeout(reopenTimer);
    backoff = Math.min(10000, backoff ? backoff * 2 : 1000);
    reopenTimer = setTimeout(connect, backoff / 2 + Math.random() * backoff / 2);
  }
  // Offline, the open stream is as good as dead (a phone changing networks
  // keeps a silent socket): close it, and reopen from the last event id
  // when the browser is back online.
  window.addEventListener("offline", function () {
    if (es) { es.close(); es = null; }
    clearTimeout(reopenTimer);
    setBanner(TEXT.offline);
  });
  window.addEventListener("online", function () {
    if (es || connecting || (panel.hidden && !state.conv)) return;
    backoff = 0;
    connect();
  });

  function start() {
    document.body.appendChild(root);
    state.items.forEach(render);
    if (!TOKEN_URL) {
      setBanner(TEXT.noToken);
      return;
    }
    if (script.getAttribute("data-open") === "true") openPanel(false);
    else if (state.conv) connect();
  }
  // window.peakdesk lets the page open the chat from its own buttons.
  window.peakdesk = { open: function () { openPanel(true); }, close: closePanel };
  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
