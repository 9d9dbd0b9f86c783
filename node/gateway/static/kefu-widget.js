/* Kefu chat widget: one script + one stylesheet, embedded with
 *   <script src="https://GATEWAY/widget/kefu-widget.js" data-tenant="PUBLIC_ID" defer></script>
 * Optional attributes: data-lang="zh|en" (default: the page's <html lang>, then the browser),
 * data-identity="TOKEN" (identity token from the enterprise's backend), data-open="true",
 * data-gateway="https://GATEWAY" (default: where the script came from).
 * Talks to the gateway over WebSocket (/v1/chat/{tenant}/ws); reconnects with backoff after a
 * dropped connection and continues the same conversation (session id kept in sessionStorage).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var tenant = script.getAttribute("data-tenant") || "";
  var base = script.getAttribute("data-gateway") || new URL(script.src, location.href).origin;
  var identity = script.getAttribute("data-identity") || "";
  var pageLang = script.getAttribute("data-lang") || document.documentElement.lang || navigator.language || "en";
  var lang = /^zh/i.test(pageLang) ? "zh" : "en";
  var T = {
    zh: { title: "在线客服", placeholder: "请输入您的问题…", send: "发送", open: "联系客服", close: "关闭",
          typing: "客服正在输入…", online: "在线", connecting: "正在连接…", offline: "连接已断开，正在重连…",
          handoff: "已为您转接人工客服，请稍候。", agent: "人工客服", ended: "会话已结束。",
          log: "对话记录", input: "消息", error: "出错了：" },
    en: { title: "Customer service", placeholder: "Type your question…", send: "Send", open: "Chat with us",
          close: "Close", typing: "Typing…", online: "Online", connecting: "Connecting…",
          offline: "Connection lost, reconnecting…", handoff: "You are being transferred to a human agent. Please wait.",
          agent: "Agent", ended: "The conversation has ended.", log: "Conversation", input: "Message", error: "Error: " }
  }[lang];
  var storeKey = "kefu-session-" + tenant;
  var sessionId = "";
  try { sessionId = sessionStorage.getItem(storeKey) || ""; } catch (e) { sessionId = ""; }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) { node.textContent = text; }
    return node;
  }
  var launcher = el("button", { "class": "kefu-launcher", type: "button", "aria-haspopup": "dialog" }, T.open);
  var box = el("section", { "class": "kefu-widget", role: "dialog", "aria-label": T.title, lang: lang, hidden: "" });
  var header = el("header");
  var titleWrap = el("div");
  titleWrap.appendChild(el("h2", { id: "kefu-title" }, T.title));
  var status = el("span", { "class": "kefu-status", role: "status" }, T.connecting);
  titleWrap.appendChild(status);
  var closeBtn = el("button", { type: "button", "aria-label": T.close }, "×");
  header.appendChild(titleWrap);
  header.appendChild(closeBtn);
  var log = el("ol", { "class": "kefu-log", role: "log", "aria-live": "polite", "aria-label": T.log });
  var typing = el("div", { "class": "kefu-typing", "aria-live": "polite" });
  var form = el("form");
  var input = el("input", { type: "text", "aria-label": T.input, placeholder: T.placeholder, maxlength: "1000",
                            autocomplete: "off", name: "message" });
  var send = el("button", { type: "submit" }, T.send);
  form.appendChild(input);
  form.appendChild(send);
  [header, log, typing, form].forEach(function (n) { box.appendChild(n); });

  function add(kind, text) {
    var item = el("li", { "class": "kefu-msg kefu-" + kind }, text);
    if (kind === "agent") { item.setAttribute("aria-label", T.agent + ": " + text); }
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }
  function open() { box.hidden = false; launcher.hidden = true; input.focus(); connect(); }
  function close() { box.hidden = true; launcher.hidden = false; launcher.focus(); }
  launcher.addEventListener("click", open);
  closeBtn.addEventListener("click", close);
  box.addEventListener("keydown", function (e) { if (e.key === "Escape") { close(); } });

  var ws = null, retry = 0, queue = [], seen = {};
  function remember(id) {
    sessionId = id;
    try { sessionStorage.setItem(storeKey, id); } catch (e) { /* private mode */ }
  }
  function connect() {
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) { return; }
    var url = new URL("/v1/chat/" + encodeURIComponent(tenant) + "/ws", base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("channel", "web");
    url.searchParams.set("lang", lang);
    if (sessionId) { url.searchParams.set("session_id", sessionId); }
    if (identity) { url.searchParams.set("identity", identity); }
    status.textContent = T.connecting;
    ws = new WebSocket(url.toString());
    ws.onopen = function () {
      retry = 0;
      status.textContent = T.online;
      while (queue.length) { ws.send(queue.shift()); }
    };
    ws.onmessage = function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === "typing") { typing.textContent = T.typing; remember(m.session_id); }
      else if (m.type === "reply") {
        typing.textContent = "";
        remember(m.reply.session_id);
        if (m.reply.text) { add("bot", m.reply.text); }
        send.disabled = false;
      } else if (m.type === "handoff") { add("notice", T.handoff); }
      else if (m.type === "agent_message") {
        if (!seen[m.turn.seq]) { seen[m.turn.seq] = 1; add(m.turn.role === "agent" ? "agent" : "notice", m.turn.text); }
      } else if (m.type === "session") {
        if (!log.children.length) {
          m.session.turns.forEach(function (t) {
            seen[t.seq] = 1;
            add(t.role === "user" ? "user" : (t.role === "agent" ? "agent" : (t.role === "bot" ? "bot" : "notice")), t.text);
          });
        } else { m.session.turns.forEach(function (t) { seen[t.seq] = 1; }); }
      } else if (m.type === "status" && (m.status === "ended" || m.status === "expired")) { add("notice", T.ended); }
      else if (m.type === "error") {
        typing.textContent = "";
        send.disabled = false;
        if (m.error.code === "not_found" || m.error.code === "conversation_closed" || m.error.code === "node_down") {
          remember("");
        }
        add("notice", T.error + m.error.message);
      }
    };
    ws.onclose = function () {
      status.textContent = T.offline;
      send.disabled = false;
      if (box.hidden) { return; }
      retry = Math.min(retry + 1, 6);
      setTimeout(connect, 250 * Math.pow(2, retry - 1));
    };
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) { return; }
    input.value = "";
    add("user", text);
    var frame = JSON.stringify({ type: "message", text: text, language: "",
                                 request_id: Date.now().toString(36) + Math.random().toString(36).slice(2, 10) });
    if (ws && ws.readyState === 1) { ws.send(frame); send.disabled = true; } else { queue.push(frame); connect(); }
  });
  function mount() {
    document.body.appendChild(launcher);
    document.body.appendChild(box);
    if (script.getAttribute("data-open") === "true") { open(); }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", mount); } else { mount(); }
})();
