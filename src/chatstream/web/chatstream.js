// The chatstream web UI: a chat page over the HTTP API of chatstream.
//
// Plain browser JavaScript, no build step; the libraries it uses to render replies as markdown
// (marked, DOMPurify, highlight.js) are vendored and loaded by index.html before it. Every
// endpoint is fetched with a RELATIVE url, so the app works when mounted under a prefix. A
// user's text is only ever inserted as text; a reply's markdown is rendered to HTML that is
// sanitized before it reaches the page, and raw HTML in it is shown as text (see "markdown").
//
// Init params (the server writes them in place of `const opts = {}` in index.html):
//   lang:  "en" or "ja" (default: the browser's language)
//   title: the page title
(function () {
  "use strict";

  const options = typeof opts === "object" && opts !== null ? opts : {};

  // ------------------------------------------------------------------ text

  function ordinal(n) {
    const tens = n % 100;
    if (tens >= 11 && tens <= 13) return n + "th";
    return n + ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th");
  }

  const TEXTS = {
    en: {
      conversation: "Conversation",
      clear: "Clear chat",
      clearShort: "Clear",
      theme: "Dark mode",
      settings: "Settings",
      settingsHint: "For this conversation, from its next reply.",
      temperature: "Temperature",
      maxTokens: "Longest reply (tokens)",
      save: "Save",
      cancel: "Cancel",
      settingsFailed: "The settings could not be saved.",
      emptyTitle: "How can I help?",
      emptyText: "Send a message to start the conversation.",
      inputLabel: "Message",
      placeholder: "Message…",
      send: "Send",
      stop: "Stop",
      hint: "Enter to send, Shift+Enter for a new line",
      you: "You",
      assistant: "Assistant",
      like: "Good reply",
      dislike: "Bad reply",
      copy: "Copy",
      copyCode: "Copy code",
      copied: "Copied",
      regenerate: "Regenerate",
      dismiss: "Dismiss",
      retry: "Try again",
      queued: (n) => "You are " + ordinal(n) + " in line",
      waiting: "Waiting for a reply…",
      stopped: "Stopped",
      inProgress: "A reply is being generated…",
      truncated: "The reply reached its length limit.",
      replyFailed: "The reply failed.",
      busy: "The server is busy right now. Please try again in a moment.",
      busyRetry: (s) =>
        "The server is busy right now. Please try again in " + s + (s === 1 ? " second." : " seconds."),
      conversationBusy:
        "A reply is already being generated for this chat (in another tab?). Wait for it, or stop it there.",
      unavailable: "The server is not taking new messages right now. Please try again later.",
      forbidden: "You are not allowed to do this.",
      error: (m) => "Something went wrong: " + m,
      network: "Could not reach the server. Check your connection and try again.",
      connectionLost: "The connection was lost before the reply finished.",
      reconnecting: "Reconnecting…",
      feedbackFailed: "Your feedback could not be sent.",
      clearFailed: "The chat could not be cleared.",
      roleGranted: (r) => "Role granted: " + r,
      ttft: (s) => s + " s to first token",
      rate: (r) => r + " tokens/s",
      cached: (n) => n + (n === 1 ? " token" : " tokens") + " from cache",
      conversations: "Conversations",
      newChat: "New chat",
      untitled: "Untitled chat",
      rename: "Rename",
      renameLabel: "Title",
      deleteChat: "Delete",
      deleteConfirm: (t) => "Delete “" + t + "”? Its messages are gone for good.",
      conversationFailed: "The conversation could not be changed.",
      conversationGone: "This conversation was deleted (in another tab?): here is the current one.",
      edit: "Edit",
      editLabel: "Edit your message",
      versions: "Versions",
      previousVersion: "Previous version",
      nextVersion: "Next version",
      systemPrompt: "System prompt",
      systemPromptHint: "Empty: the model's default.",
    },
    ja: {
      conversation: "会話",
      clear: "会話をクリア",
      clearShort: "クリア",
      theme: "ダークモード",
      settings: "設定",
      settingsHint: "この会話の次の応答から適用されます。",
      temperature: "温度",
      maxTokens: "応答の最大トークン数",
      save: "保存",
      cancel: "キャンセル",
      settingsFailed: "設定を保存できませんでした。",
      emptyTitle: "何をお手伝いしましょうか?",
      emptyText: "メッセージを送信して会話を始めましょう。",
      inputLabel: "メッセージ",
      placeholder: "メッセージを入力…",
      send: "送信",
      stop: "停止",
      hint: "Enterで送信、Shift+Enterで改行",
      you: "あなた",
      assistant: "アシスタント",
      like: "良い回答",
      dislike: "良くない回答",
      copy: "コピー",
      copyCode: "コードをコピー",
      copied: "コピーしました",
      regenerate: "再生成",
      dismiss: "閉じる",
      retry: "再試行",
      queued: (n) => "待ち順: " + n + "番目",
      waiting: "応答を待っています…",
      stopped: "停止しました",
      inProgress: "応答を生成中です…",
      truncated: "応答が長さの上限に達しました。",
      replyFailed: "応答の生成に失敗しました。",
      busy: "サーバーが混み合っています。しばらくしてからもう一度お試しください。",
      busyRetry: (s) => "サーバーが混み合っています。" + s + "秒ほどしてからもう一度お試しください。",
      conversationBusy:
        "この会話では別の応答を生成中です(別のタブ?)。終わるまで待つか、そちらで停止してください。",
      unavailable: "サーバーは現在新しいメッセージを受け付けていません。後でもう一度お試しください。",
      forbidden: "この操作は許可されていません。",
      error: (m) => "エラーが発生しました: " + m,
      network: "サーバーに接続できませんでした。接続を確認してもう一度お試しください。",
      connectionLost: "応答の途中で接続が切れました。",
      reconnecting: "再接続しています…",
      feedbackFailed: "フィードバックを送信できませんでした。",
      clearFailed: "会話をクリアできませんでした。",
      roleGranted: (r) => "ロールが付与されました: " + r,
      ttft: (s) => "最初のトークンまで " + s + " 秒",
      rate: (r) => r + " トークン/秒",
      cached: (n) => "キャッシュから " + n + " トークン",
      conversations: "会話一覧",
      newChat: "新しいチャット",
      untitled: "無題のチャット",
      rename: "名前を変更",
      renameLabel: "タイトル",
      deleteChat: "削除",
      deleteConfirm: (t) => "「" + t + "」を削除しますか?メッセージは元に戻せません。",
      conversationFailed: "会話を変更できませんでした。",
      conversationGone: "この会話は削除されました（別のタブで？）。現在の会話を表示します。",
      edit: "編集",
      editLabel: "メッセージを編集",
      versions: "バージョン",
      previousVersion: "前のバージョン",
      nextVersion: "次のバージョン",
      systemPrompt: "システムプロンプト",
      systemPromptHint: "空欄: モデルの既定のプロンプト。",
    },
  };

  function pickLanguage() {
    const wanted = [options.lang].concat(navigator.languages || [], [navigator.language]);
    for (const tag of wanted) {
      if (typeof tag !== "string") continue;
      const base = tag.toLowerCase().split(/[-_]/)[0];
      if (base === "ja" || base === "en") return base;
      if (tag === options.lang) continue; // an unknown forced language: fall back to the browser
      return "en";
    }
    return "en";
  }

  const lang = pickLanguage();
  const T = TEXTS[lang];
  document.documentElement.lang = lang;

  // ------------------------------------------------------------------ icons (static, trusted)

  const SVG_NS = "http://www.w3.org/2000/svg";
  const ICONS = {
    logo: ["M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.6c-.5.4-1.3.1-1.3-.6V16A2.5 2.5 0 0 1 4 13.5z", "M8.5 8.5h7M8.5 11.5h4.5"],
    send: ["M12 19V5", "M6 11l6-6 6 6"],
    stop: [{ rect: [7, 7, 10, 10, 1.5] }],
    clear: ["M4 7h16", "M10 11v6M14 11v6", "M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12", "M9 7V4.5A1.5 1.5 0 0 1 10.5 3h3A1.5 1.5 0 0 1 15 4.5V7"],
    like: ["M7 10v10H4.5A1.5 1.5 0 0 1 3 18.5v-7A1.5 1.5 0 0 1 4.5 10z", "M7 10l4-7a2.5 2.5 0 0 1 2.5 2.8L13 9h5.4a2 2 0 0 1 2 2.3l-1.2 7A2 2 0 0 1 17.2 20H7"],
    dislike: ["M17 14V4h2.5A1.5 1.5 0 0 1 21 5.5v7a1.5 1.5 0 0 1-1.5 1.5z", "M17 14l-4 7a2.5 2.5 0 0 1-2.5-2.8L11 15H5.6a2 2 0 0 1-2-2.3l1.2-7A2 2 0 0 1 6.8 4H17"],
    regenerate: ["M20 11a8 8 0 0 0-14.6-4.5L4 8", "M4 3.5V8h4.5", "M4 13a8 8 0 0 0 14.6 4.5L20 16", "M20 20.5V16h-4.5"],
    copy: [{ rect: [8, 8, 12, 12, 2] }, "M16 8V6a2 2 0 0 0-2-2H6a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h2"],
    check: ["M5 12.5l4.5 4.5L19 7.5"],
    alert: [{ circle: [12, 12, 9] }, "M12 7.5v5.5", "M12 16.5v.01"],
    close: ["M6 6l12 12M18 6L6 18"],
    theme: ["M20 14.5A8 8 0 0 1 9.5 4a8 8 0 1 0 10.5 10.5z"],
    settings: ["M4 7h10M18 7h2M4 17h4M12 17h8", { circle: [16, 7, 2] }, { circle: [10, 17, 2] }],
    plus: ["M12 5v14M5 12h14"],
    menu: ["M4 7h16M4 12h16M4 17h16"],
    edit: ["M4 20h4L19 9a2.8 2.8 0 0 0-4-4L4 16z", "M13.5 6.5l4 4"],
    prev: ["M14.5 6l-6 6 6 6"],
    next: ["M9.5 6l6 6-6 6"],
  };

  function icon(name) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", name === "stop" ? "0" : "1.8");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    for (const part of ICONS[name]) {
      let node;
      if (typeof part === "string") {
        node = document.createElementNS(SVG_NS, "path");
        node.setAttribute("d", part);
      } else if (part.rect) {
        const [x, y, w, h, r] = part.rect;
        node = document.createElementNS(SVG_NS, "rect");
        for (const [k, v] of [["x", x], ["y", y], ["width", w], ["height", h], ["rx", r]]) {
          node.setAttribute(k, String(v));
        }
        if (name === "stop") node.setAttribute("fill", "currentColor");
      } else {
        const [cx, cy, r] = part.circle;
        node = document.createElementNS(SVG_NS, "circle");
        node.setAttribute("cx", String(cx));
        node.setAttribute("cy", String(cy));
        node.setAttribute("r", String(r));
      }
      svg.appendChild(node);
    }
    return svg;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function iconButton(name, label, onClick) {
    const button = el("button", "icon-button");
    button.type = "button";
    button.setAttribute("aria-label", label);
    button.title = label;
    button.dataset.action = name;
    button.appendChild(icon(name));
    button.addEventListener("click", onClick);
    return button;
  }

  // ------------------------------------------------------------------ page

  const $ = (id) => document.getElementById(id);
  const scroller = $("scroller");
  const list = $("messages");
  const empty = $("empty");
  const form = $("composer");
  const input = $("input");
  const sendButton = $("send");
  const stopButton = $("stop");
  const clearButton = $("clear");
  const themeButton = $("theme");
  const settingsButton = $("settings");
  const settingsDialog = $("settings-dialog");
  const settingsForm = $("settings-form");
  const settingsError = $("settings-error");
  const temperatureInput = $("setting-temperature");
  const maxTokensInput = $("setting-max-tokens");
  const notice = $("notice");

  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = T[node.dataset.i18n];
  for (const node of document.querySelectorAll("[data-i18n-label]")) {
    node.setAttribute("aria-label", T[node.dataset.i18nLabel]);
    if (node.tagName === "BUTTON") node.title = T[node.dataset.i18nLabel];
  }
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = T[node.dataset.i18nPlaceholder];
  }
  for (const node of document.querySelectorAll("[data-icon]")) node.appendChild(icon(node.dataset.icon));
  if (typeof options.title === "string" && options.title) {
    $("title").textContent = options.title;
    document.title = options.title;
  }

  // ------------------------------------------------------------------ theme

  // Light or dark: the system's setting (followed live), until the toggle chooses; the
  // choice is remembered. The page's head applies it before the first paint.
  const THEME = "chatstream.theme";
  const systemDark = matchMedia("(prefers-color-scheme: dark)");

  function storedTheme() {
    try {
      const theme = localStorage.getItem(THEME);
      return theme === "dark" || theme === "light" ? theme : null;
    } catch (_) {
      return null;
    }
  }

  function applyTheme() {
    const theme = storedTheme() || (systemDark.matches ? "dark" : "light");
    document.documentElement.dataset.theme = theme;
    themeButton.setAttribute("aria-pressed", String(theme === "dark"));
  }

  themeButton.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    try {
      localStorage.setItem(THEME, next);
    } catch (_) {
      /* not remembered: this page only */
    }
    document.documentElement.dataset.theme = next;
    themeButton.setAttribute("aria-pressed", String(next === "dark"));
  });
  systemDark.addEventListener("change", applyTheme);
  applyTheme();

  // ------------------------------------------------------------------ markdown

  // Replies are markdown: CommonMark plus GitHub's tables, task lists and strikethrough, by the
  // vendored marked; every piece of HTML it makes goes through DOMPurify before it reaches the
  // page, and fenced code is highlighted by highlight.js. Raw HTML in a reply is shown as text,
  // never parsed; images are shown as links (a reply must not make the browser fetch URLs by
  // itself); links open in a new tab, without an opener or a referrer. Without the libraries
  // (an app that serves no vendor/), replies are plain text, as users' messages always are.
  //
  // renderMarkdownInto(target, source, {final}) is incremental: the source is lexed into its
  // top-level blocks; a block followed by another (or any block once final) is finished, and
  // its nodes stay as they are while its text does not change; only the growing last block is
  // rendered again. Code is highlighted once its block is finished (its closing fence seen, or
  // the reply done); until then it is plain monospace text.

  const markedLib = window.marked;
  const purifier = window.DOMPurify;
  const markdown =
    markedLib && typeof markedLib.Marked === "function" && purifier && purifier.isSupported
      ? new markedLib.Marked({
          gfm: true,
          breaks: false,
          renderer: {
            html(token) {
              const text = escapeHtml(token.text.replace(/\n+$/, ""));
              return token.block ? '<p class="raw-html">' + text + "</p>\n" : text;
            },
            image(token) {
              return '<a href="' + escapeHtml(token.href) + '">' + escapeHtml(token.text || token.href) + "</a>";
            },
            code(token) {
              const lang = (token.lang || "").trim().split(/\s+/)[0];
              const attr = lang ? ' data-lang="' + escapeHtml(lang) + '"' : "";
              return "<pre><code" + attr + ">" + escapeHtml(token.text) + "</code></pre>\n";
            },
          },
        })
      : null;

  // What marked makes, and highlight.js's spans: nothing else survives.
  const PURIFY = {
    ALLOWED_TAGS: [
      "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
      "input", "li", "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead",
      "tr", "ul",
    ],
    ALLOWED_ATTR: ["align", "checked", "class", "data-lang", "disabled", "href", "start", "title", "type"],
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  };
  if (markdown) {
    purifier.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      } else if (node.tagName === "INPUT") {
        // Only the task lists' ticks, which nobody can tick.
        if (node.getAttribute("type") !== "checkbox") node.remove();
        else node.setAttribute("disabled", "");
      }
    });
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // Per rendered element: {source, final, links, blocks: [{raw, finished, nodes}]}.
  const rendered = new WeakMap();

  function renderMarkdownInto(target, source, { final = false } = {}) {
    if (!markdown) {
      if (target.textContent !== source) target.textContent = source;
      return;
    }
    let state = rendered.get(target);
    if (!state) {
      state = { source: null, final: false, links: "{}", blocks: [] };
      rendered.set(target, state);
      target.replaceChildren();
    }
    if (state.source === source && state.final === final) return;
    let tokens;
    try {
      tokens = markdown.lexer(source);
    } catch (_) {
      tokens = null;
    }
    if (!tokens) {
      rendered.delete(target);
      target.textContent = source;
      return;
    }
    state.source = source;
    state.final = final;
    // A link definition anywhere applies to every block: all again when they change.
    const links = JSON.stringify(tokens.links || {});
    let keep = links === state.links ? 0 : -1;
    state.links = links;
    if (keep === 0) {
      while (keep < state.blocks.length && keep < tokens.length) {
        const block = state.blocks[keep];
        const token = tokens[keep];
        if (block.raw !== token.raw || (!block.finished && isFinished(tokens, keep, final))) break;
        keep++;
      }
    }
    keep = Math.max(keep, 0);
    for (const block of state.blocks.splice(keep)) {
      for (const node of block.nodes) node.remove();
    }
    for (let i = keep; i < tokens.length; i++) {
      const finished = isFinished(tokens, i, final);
      const nodes = renderBlock(tokens[i], tokens.links, finished);
      state.blocks.push({ raw: tokens[i].raw, finished, nodes });
      target.append(...nodes);
    }
  }

  function isFinished(tokens, index, final) {
    return final || index < tokens.length - 1 || fenceClosed(tokens[index]);
  }

  // A fenced code block whose closing fence has come.
  function fenceClosed(token) {
    if (token.type !== "code") return false;
    const open = /^ {0,3}(`{3,}|~{3,})/.exec(token.raw);
    const lines = token.raw.replace(/\n+$/, "").split("\n");
    if (!open || lines.length < 2) return false;
    const close = /^ {0,3}(`+|~+)[ \t]*$/.exec(lines[lines.length - 1]);
    return !!close && close[1][0] === open[1][0] && close[1].length >= open[1].length;
  }

  function renderBlock(token, links, finished) {
    const one = [token];
    one.links = links;
    const fragment = purifier.sanitize(markdown.parser(one), PURIFY);
    for (const code of fragment.querySelectorAll("pre > code")) decorateCode(code, finished);
    return Array.from(fragment.childNodes);
  }

  // A code block: its language and a copy button above it; highlighted once finished.
  function decorateCode(code, finished) {
    const pre = code.parentNode;
    const lang = code.dataset.lang || "";
    const box = el("div", "code-block");
    const head = el("div", "code-head");
    head.append(el("span", "code-lang", lang), copyCodeButton(code));
    pre.replaceWith(box);
    box.append(head, pre);
    if (finished) highlightCode(code, lang);
  }

  // Only a language the fence names (no guessing: detection runs every grammar on the text,
  // and guesses wrong on short snippets); an unknown one stays plain.
  function highlightCode(code, lang) {
    const hljs = window.hljs;
    if (!hljs || !lang || !hljs.getLanguage(lang)) return;
    try {
      const result = hljs.highlight(code.textContent, { language: lang, ignoreIllegals: true });
      code.replaceChildren(purifier.sanitize(result.value, PURIFY));
      code.classList.add("hljs");
    } catch (_) {
      /* left plain */
    }
  }

  function copyCodeButton(code) {
    const button = el("button", "code-copy");
    button.type = "button";
    const show = (name, label, text) => {
      button.replaceChildren(icon(name), el("span", null, text));
      button.setAttribute("aria-label", label);
      button.classList.toggle("done", name === "check");
    };
    show("copy", T.copyCode, T.copy);
    let timer = 0;
    button.addEventListener("click", async () => {
      await copyText(code.textContent);
      show("check", T.copied, T.copied);
      clearTimeout(timer);
      timer = setTimeout(() => show("copy", T.copyCode, T.copy), 1500);
    });
    return button;
  }

  // The clipboard, or a hidden text area and the copy command where it is refused.
  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = el("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      try {
        document.execCommand("copy");
      } catch (_) {
        /* nothing more to try */
      }
      area.remove();
    }
  }

  // The highlighter's colours follow the page's theme.
  function syncCodeTheme() {
    const dark = document.documentElement.dataset.theme === "dark";
    const light = $("code-light");
    const night = $("code-dark");
    if (light) light.media = dark ? "not all" : "all";
    if (night) night.media = dark ? "all" : "not all";
  }
  new MutationObserver(syncCodeTheme).observe(document.documentElement, {
    attributes: true,
    attributeFilter: ["data-theme"],
  });
  syncCodeTheme();

  // ------------------------------------------------------------------ messages

  // Each message: {id, role, content, status, finishReason, feedback, node, parts}.
  // status: "pending" (sent, nothing back yet), "streaming", "complete", "cancelled", "error".
  const messages = [];
  let busy = false; // a turn is in flight (or being cleared)
  let controller = null;

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function scrollToBottom() {
    scroller.scrollTop = scroller.scrollHeight;
  }

  function createMessage(data) {
    const message = {
      id: data.id || null,
      role: data.role === "user" ? "user" : "assistant",
      content: data.content || "",
      status: data.status || "complete",
      finishReason: data.finish_reason || null,
      feedback: data.feedback || null,
      versions: Array.isArray(data.versions) ? data.versions.map(String) : null,
      pendingLabel: "",
      note: null,
      stats: "",
      node: null,
      parts: null,
      frame: 0, // a render of the reply waiting for the next animation frame
    };
    const node = el("div", "msg " + message.role);
    node.dataset.role = message.role;
    const body = el("div", "body");
    const bubble = el("div", "bubble");
    const text = el("div", message.role === "assistant" && markdown ? "text md" : "text");
    const label = el("span", "sr-only", message.role === "user" ? T.you : T.assistant);
    label.textContent += ": ";
    bubble.appendChild(label);
    bubble.appendChild(text);
    // While a reply waits: three dots and the place in the queue.
    const pending = el("div", "pending");
    const pendingLabel = el("span", "pending-label");
    if (message.role === "assistant") {
      pending.setAttribute("role", "status");
      const dots = el("span", "dots");
      dots.setAttribute("aria-hidden", "true");
      dots.append(el("i"), el("i"), el("i"));
      pending.append(dots, pendingLabel);
      bubble.appendChild(pending);
    }
    body.appendChild(bubble);
    const note = el("div", "note");
    const actions = el("div", "actions");
    const stats = el("div", "stats");
    body.append(note, actions, stats);
    if (message.role === "assistant") {
      const avatar = el("div", "avatar");
      avatar.setAttribute("aria-hidden", "true");
      avatar.appendChild(icon("logo"));
      node.appendChild(avatar);
    }
    node.appendChild(body);
    message.node = node;
    message.parts = { text, textNode: document.createTextNode(""), pending, pendingLabel, note, actions, stats };
    if (message.role === "user") text.appendChild(message.parts.textNode);
    showText(message);
    update(message);
    return message;
  }

  function addMessage(data) {
    const message = createMessage(data);
    messages.push(message);
    list.appendChild(message.node);
    empty.hidden = true;
    return message;
  }

  function removeMessage(message) {
    const index = messages.indexOf(message);
    if (index >= 0) messages.splice(index, 1);
    message.node.remove();
    if (!messages.length) empty.hidden = false;
  }

  function setText(message, content) {
    message.content = content;
    showText(message);
  }

  function appendText(message, text) {
    message.content += text;
    showText(message);
  }

  // The text element keeps the message's source (markdown, for a reply) in data-source. A
  // user's message is shown as typed; a reply is rendered as markdown, at most once a frame
  // while it streams, and at once when it has ended.
  function showText(message) {
    message.parts.text.dataset.source = message.content;
    if (message.role === "user") message.parts.textNode.data = message.content;
    else if (isLive(message)) scheduleRender(message);
    else renderReply(message);
  }

  function isLive(message) {
    return message.status === "pending" || message.status === "streaming";
  }

  function scheduleRender(message) {
    if (message.frame) return;
    message.frame = requestAnimationFrame(() => {
      message.frame = 0;
      renderReply(message);
    });
  }

  function renderReply(message) {
    if (message.frame) {
      cancelAnimationFrame(message.frame);
      message.frame = 0;
    }
    renderMarkdownInto(message.parts.text, message.content, { final: !isLive(message) });
  }

  // Refresh the status, notes and actions of one message from its fields.
  function update(message) {
    const { node, parts } = message;
    if (message.role === "assistant" && !isLive(message)) renderReply(message); // its end
    node.dataset.status = message.status;
    if (message.id) node.dataset.messageId = message.id;
    else delete node.dataset.messageId;
    const waiting = message.status === "pending" || (message.status === "streaming" && !message.content);
    parts.pending.hidden = !waiting;
    parts.pendingLabel.textContent = waiting ? message.pendingLabel : "";
    let note = message.note;
    if (!note && message.status === "cancelled") note = T.stopped;
    if (!note && message.status === "error") note = T.replyFailed;
    if (!note && message.status === "streaming" && !busy) note = T.inProgress;
    if (!note && message.finishReason === "length") note = T.truncated;
    parts.note.textContent = note || "";
    parts.stats.textContent = message.stats;
    parts.note.classList.toggle("error", message.status === "error");
    // The bubble of a reply stopped before any text would be an empty box: hide it.
    parts.text.parentNode.hidden =
      message.role === "assistant" && !message.content && !waiting;
    renderActions(message);
  }

  function lastAssistant() {
    const last = messages[messages.length - 1];
    return last && last.role === "assistant" ? last : null;
  }

  function renderActions(message) {
    const { actions } = message.parts;
    // Keep the keyboard focus on the same action across the re-render.
    const focused = actions.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    actions.replaceChildren();
    fillActions(message, actions);
    const again = focused && actions.querySelector('[data-action="' + focused + '"]');
    if (again) again.focus();
  }

  function fillActions(message, actions) {
    if (message.role === "user") {
      fillUserActions(message, actions);
      return;
    }
    if (message.role !== "assistant" || !message.id) return;
    if (message.status === "pending" || message.status === "streaming") return;
    const versions = versionsNav(message);
    if (versions) actions.appendChild(versions);
    if (message.content) {
      actions.appendChild(iconButton("copy", T.copy, () => copy(message, actions)));
    }
    const like = iconButton("like", T.like, () => sendFeedback(message, true));
    const dislike = iconButton("dislike", T.dislike, () => sendFeedback(message, false));
    like.setAttribute("aria-pressed", String(!!message.feedback && message.feedback.is_like === true));
    dislike.setAttribute("aria-pressed", String(!!message.feedback && message.feedback.is_like === false));
    actions.append(like, dislike);
    if (message === lastAssistant()) {
      const regen = iconButton("regenerate", T.regenerate, () => regenerate());
      regen.disabled = busy;
      actions.appendChild(regen);
    }
  }

  function refreshAll() {
    for (const message of messages) update(message);
  }

  // ------------------------------------------------------------------ notices

  function showNotice(kind, text, action) {
    notice.replaceChildren();
    notice.className = "notice " + kind;
    notice.dataset.kind = kind;
    notice.appendChild(icon("alert"));
    notice.appendChild(el("div", "notice-text", text));
    if (action) {
      const button = el("button", "notice-action", action.label);
      button.type = "button";
      button.addEventListener("click", () => {
        hideNotice();
        action.run();
      });
      notice.appendChild(button);
    }
    notice.appendChild(iconButton("close", T.dismiss, hideNotice));
    notice.hidden = false;
  }

  function hideNotice() {
    notice.hidden = true;
    notice.replaceChildren();
    delete notice.dataset.kind;
  }

  // ------------------------------------------------------------------ state

  function setBusy(value) {
    busy = value;
    document.body.dataset.state = value ? "busy" : "idle";
    list.setAttribute("aria-busy", String(value));
    stopButton.hidden = !value;
    sendButton.hidden = value;
    clearButton.disabled = value;
    if (value) closeEditor();
    updateSendButton();
    refreshAll();
    renderConversations();
  }

  function updateSendButton() {
    sendButton.disabled = busy || !input.value.trim();
  }

  function autoGrow() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 200) + "px";
  }

  // ------------------------------------------------------------------ HTTP

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  // Server-Sent Events from a fetch body: calls onEvent(type, data, id) per event.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const flush = (block) => {
      let type = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
        else if (field === "id") id = value;
      }
      if (!data.length) return;
      let payload;
      try {
        payload = JSON.parse(data.join("\n"));
      } catch (_) {
        payload = { text: data.join("\n") };
      }
      onEvent(type, payload || {}, id);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        flush(block);
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) flush(buffer);
  }

  // What a refused request means for the person, from its status and JSON body.
  function refusal(response, body) {
    const code = body && typeof body.error === "string" ? body.error : "";
    if (response.status === 429 || code === "too_many_requests") {
      const after = parseInt(response.headers.get("Retry-After") || "", 10);
      return { kind: "busy", text: after > 1 ? T.busyRetry(after) : T.busy };
    }
    if (response.status === 409 || code === "conversation_busy") {
      return { kind: "busy", text: T.conversationBusy, conflict: true };
    }
    if (code === "unknown_conversation") return { kind: "error", text: T.conversationGone, gone: true };
    if (response.status === 503) return { kind: "busy", text: T.unavailable };
    if (response.status === 403) return { kind: "error", text: T.forbidden };
    const detail = (body && (body.message || body.error)) || response.status + " " + response.statusText;
    return { kind: "error", text: T.error(String(detail)) };
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ------------------------------------------------------------------ a turn

  let historyLoaded = Promise.resolve();

  async function sendMessage(text) {
    if (busy || !text.trim()) return;
    await historyLoaded;
    if (busy) return;
    hideNotice();
    input.value = "";
    autoGrow();
    const user = addMessage({ role: "user", content: text, status: "complete" });
    const reply = addMessage({ role: "assistant", content: "", status: "pending" });
    reply.pendingLabel = T.waiting;
    update(reply);
    scrollToBottom();
    await runTurn({ user_input: text }, reply, {
      undo() {
        removeMessage(reply);
        removeMessage(user);
        if (!input.value) {
          input.value = text;
          autoGrow();
          updateSendButton();
        }
      },
      retry: () => sendMessage(text),
      roleGranted() {
        // A pass phrase is not part of the conversation (and should not stay on screen).
        removeMessage(reply);
        removeMessage(user);
      },
    });
  }

  async function regenerate() {
    if (busy) return;
    await historyLoaded;
    const reply = lastAssistant();
    if (busy || !reply) return;
    hideNotice();
    const before = {
      id: reply.id,
      content: reply.content,
      status: reply.status,
      finishReason: reply.finishReason,
      feedback: reply.feedback,
      note: reply.note,
      stats: reply.stats,
    };
    reply.id = null;
    reply.finishReason = null;
    reply.feedback = null;
    reply.stats = "";
    reply.note = null;
    reply.status = "pending";
    reply.pendingLabel = T.waiting;
    setText(reply, "");
    update(reply);
    await runTurn({ regenerate: true }, reply, {
      undo() {
        Object.assign(reply, before);
        setText(reply, before.content);
        update(reply);
      },
      retry: () => regenerate(),
      roleGranted() {},
    });
  }

  // The turn in flight (its reply, and whether the server has answered), for Stop.
  let current = null;
  // A reply still streaming when the page goes away, to follow again after a reload.
  const PENDING = "chatstream.pending";

  function rememberPending(reply, text) {
    try {
      sessionStorage.setItem(
        PENDING,
        JSON.stringify({ id: reply.id, input: text, conversation: conversationId }),
      );
    } catch (_) {
      /* storage off: a reload then shows the history only */
    }
  }

  function forgetPending() {
    try {
      sessionStorage.removeItem(PENDING);
    } catch (_) {
      /* nothing stored */
    }
  }

  async function runTurn(payload, reply, hooks) {
    controller = new AbortController();
    const signal = controller.signal;
    current = { reply, answered: false };
    setBusy(true);
    let ended = false;
    let lost = null;
    let gone = false; // the conversation was deleted elsewhere
    try {
      let response;
      // Right after a Stop the server may still be closing the stopped turn for a moment.
      for (let attempt = 0; ; attempt++) {
        response = await fetch("chat_stream", {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
          body: JSON.stringify(withConversation(payload)),
          credentials: "same-origin",
          signal,
        });
        if (response.status !== 409 || attempt >= 3) break;
        await readJson(response);
        await sleep(300);
      }
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.includes("text/event-stream")) {
        const body = await readJson(response);
        const why = refusal(response, body);
        hooks.undo();
        showNotice(why.kind, why.text, why.kind === "busy" && !why.conflict ? { label: T.retry, run: hooks.retry } : null);
        if (why.conflict) loadHistory();
        gone = Boolean(why.gone);
        return;
      }
      current.answered = true;
      const headerId = response.headers.get("X-ChatStream-Last-Generated-Message-Id");
      if (headerId) {
        reply.id = headerId;
        rememberPending(reply, payload.user_input || null);
      }
      ended = await follow(reply, response, signal, hooks);
      if (!ended && messages.includes(reply)) {
        reply.status = "error";
        reply.note = T.connectionLost;
        update(reply);
        showNotice("error", T.connectionLost);
        lost = reply.id;
      }
    } catch (error) {
      if (signal.aborted) {
        // Stopped before the server answered, or Stop could not reach it: the server
        // cancels the turn and keeps the partial reply, as shown.
        if (!current.answered) {
          hooks.undo();
        } else if (!ended && messages.includes(reply)) {
          reply.status = "cancelled";
          reply.pendingLabel = "";
          update(reply);
        }
      } else if (!ended) {
        if (reply.status === "pending" && !reply.id) {
          hooks.undo();
        } else if (messages.includes(reply)) {
          reply.status = "error";
          reply.note = T.connectionLost;
          update(reply);
        }
        showNotice("error", T.network);
      }
    } finally {
      forgetPending();
      controller = null;
      current = null;
      setBusy(false);
      focusInput();
      if (gone) showCurrentConversation();
    }
    if (lost) await recoverFromHistory(lost);
    await afterTurn(Boolean(payload.edit_message_id || payload.regenerate));
  }

  // The line under a finished reply: time to its first token, its speed, and the prompt
  // tokens the prefix cache served, from the `done` event.
  function statsOf(done) {
    const timings = done.timings || {};
    const usage = done.usage || {};
    const parts = [];
    if (typeof timings.ttft_ms === "number") parts.push(T.ttft((timings.ttft_ms / 1000).toFixed(2)));
    if (typeof timings.tokens_per_s === "number") parts.push(T.rate(timings.tokens_per_s.toFixed(1)));
    if (typeof usage.cached_tokens === "number" && usage.cached_tokens > 0) {
      parts.push(T.cached(usage.cached_tokens));
    }
    return parts.join(" · ");
  }

  // Waits between attempts to resume a dropped stream (the server keeps a turn whose
  // client has gone for a few seconds).
  const RESUME_DELAYS = [200, 400, 800, 1600, 2000];

  // Reads a turn's events into `reply` from `response` (null: none yet), and after a
  // dropped connection asks for the rest with the id of the last event received. True once
  // the turn has ended (done or error).
  async function follow(reply, response, signal, hooks) {
    let ended = false;
    let lastEventId = null;
    let heard = false; // an event since the last (re)connection
    const onEvent = (event, data, id) => {
      if (id) lastEventId = id;
      heard = true;
      if (reply.note === T.reconnecting) {
        reply.note = null; // back
        update(reply);
      }
      const stick = nearBottom();
      switch (event) {
        case "queued":
          reply.status = "pending";
          reply.pendingLabel = T.queued(Number(data.position) || 1);
          break;
        case "started":
          if (data.message_id) reply.id = String(data.message_id);
          reply.status = "streaming";
          reply.pendingLabel = "";
          break;
        case "delta":
          if (reply.status !== "streaming") {
            reply.status = "streaming";
            reply.pendingLabel = "";
          }
          appendText(reply, String(data.text || ""));
          if (stick) scrollToBottom();
          // Text changes need no re-render of the rest of the message.
          if (reply.node.dataset.status === "streaming" && reply.parts.pending.hidden) return;
          break;
        case "done":
          ended = true;
          if (data.finish_reason === "role_granted") return;
          if (data.message_id) reply.id = String(data.message_id);
          reply.finishReason = data.finish_reason || null;
          reply.status = data.finish_reason === "cancelled" ? "cancelled" : "complete";
          reply.note = null;
          reply.stats = statsOf(data);
          break;
        case "error":
          ended = true;
          reply.status = "error";
          reply.note = null;
          showNotice("error", T.error(String(data.message || "")));
          break;
        case "role":
          ended = true;
          hooks.roleGranted();
          showNotice("info", T.roleGranted(String(data.role || "")));
          return;
        default:
          return;
      }
      update(reply);
      if (stick) scrollToBottom();
    };
    for (let attempt = 0; ; attempt++) {
      if (response) {
        heard = false;
        try {
          await readEvents(response, onEvent);
        } catch (error) {
          if (signal.aborted) throw error;
        }
        if (heard) attempt = 0; // the tries count again from this drop
      }
      if (ended || !reply.id || attempt >= RESUME_DELAYS.length) return ended;
      if (response && reply.status === "streaming") {
        reply.note = T.reconnecting;
        update(reply);
      }
      await sleep(RESUME_DELAYS[attempt]);
      if (signal.aborted) throw new DOMException("stopped", "AbortError");
      response = null;
      const headers = { Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      try {
        const answer = await fetch("chat_stream?message_id=" + encodeURIComponent(reply.id), {
          headers,
          credentials: "same-origin",
          signal,
        });
        // 204: it had ended with what was received. (404, gone from this node, is tried
        // again: behind a round-robin balancer the next try may reach the turn's node.)
        if (answer.status === 204) return ended;
        if (answer.ok) response = answer;
      } catch (error) {
        if (signal.aborted) throw error;
      }
    }
  }

  // After a reload during a reply: follow it again from its first event.
  async function resumePending() {
    let pending = null;
    try {
      pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
    } catch (_) {
      pending = null;
    }
    if (!pending || typeof pending.id !== "string" || busy) return;
    // Follow it in its own conversation, whichever the session shows now.
    if (typeof pending.conversation === "string" && pending.conversation !== conversationId) {
      await showConversation(pending.conversation);
      if (busy) return;
    }
    let reply = messages.find((m) => m.id === pending.id);
    if (reply && reply.status !== "streaming" && reply.status !== "pending") {
      forgetPending(); // it finished while the page was away
      return;
    }
    if (reply) {
      setText(reply, "");
    } else {
      const last = messages[messages.length - 1];
      if (pending.input && !(last && last.role === "user" && last.content === pending.input)) {
        addMessage({ role: "user", content: pending.input, status: "complete" });
      }
      reply = addMessage({ role: "assistant", content: "" });
    }
    reply.id = pending.id;
    reply.status = "pending";
    reply.pendingLabel = T.reconnecting;
    update(reply);
    scrollToBottom();
    controller = new AbortController();
    current = { reply, answered: true };
    setBusy(true);
    let ended = false;
    try {
      ended = await follow(reply, null, controller.signal, { roleGranted() {} });
    } catch (_) {
      if (messages.includes(reply) && reply.status !== "complete") {
        reply.status = "cancelled";
        reply.pendingLabel = "";
        update(reply);
      }
    } finally {
      forgetPending();
      controller = null;
      current = null;
      setBusy(false);
    }
    if (!ended) await loadHistory(); // gone: show what the server kept
  }

  // Not on touch screens, where focusing opens the on-screen keyboard over the reply.
  function focusInput() {
    if (!matchMedia("(pointer: coarse)").matches) input.focus();
  }

  // Stop asks the server to stop the turn (a dropped connection does not: the server
  // keeps it for a reconnect); its last event then ends the stream. Without an answer,
  // the connection is closed.
  async function stop() {
    const turn = current;
    const stopping = controller;
    if (!stopping) return;
    if (turn && turn.answered && turn.reply.id) {
      try {
        const response = await fetch("chat_stream/stop", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ message_id: turn.reply.id }),
          credentials: "same-origin",
        });
        if (response.ok) {
          setTimeout(() => stopping.abort(), 3000);
          return;
        }
      } catch (_) {
        /* unreachable: close the connection */
      }
    }
    stopping.abort();
  }

  // ------------------------------------------------------------------ feedback, copy, clear

  async function sendFeedback(message, isLike) {
    if (!message.id) return;
    if (message.feedback && message.feedback.is_like === isLike) return;
    const before = message.feedback;
    message.feedback = { is_like: isLike, data: "" };
    renderActions(message);
    try {
      const response = await fetch("set_feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(withConversation({ message_id: message.id, is_like: isLike, form_data: "" })),
        credentials: "same-origin",
      });
      const body = await readJson(response);
      if (!response.ok || !body || body.success === false) throw new Error("refused");
    } catch (_) {
      message.feedback = before;
      renderActions(message);
      showNotice("error", T.feedbackFailed);
    }
  }

  async function copy(message, actions) {
    await copyText(message.content);
    const button = actions.querySelector('[data-action="copy"]');
    if (!button) return;
    button.replaceChildren(icon("check"));
    button.classList.add("done");
    button.setAttribute("aria-label", T.copied);
    button.title = T.copied;
    setTimeout(() => renderActions(message), 1500);
  }

  async function clearChat() {
    if (busy) return;
    hideNotice();
    clearButton.disabled = true;
    try {
      const response = await fetch("clear_context", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(withConversation({})),
        credentials: "same-origin",
      });
      const body = await readJson(response);
      // {"success": false, "message": "no context."} means there was nothing to clear.
      if (!response.ok) {
        const why = refusal(response, body);
        showNotice(why.kind, why.conflict ? T.conversationBusy : T.clearFailed);
        return;
      }
      for (const message of messages.slice()) removeMessage(message);
      refreshConversations();
      focusInput();
    } catch (_) {
      showNotice("error", T.network);
    } finally {
      clearButton.disabled = busy;
    }
  }

  // ------------------------------------------------------------------ settings

  // The conversation's temperature and reply length, kept by the server in the session
  // (/get_generation_params, /set_generation_params).
  async function openSettings() {
    settingsError.hidden = true;
    try {
      const [response] = await Promise.all([
        fetch("get_generation_params", {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        }),
        refreshConversations(),
      ]);
      const body = await readJson(response);
      const params = (response.ok && body && body.generation_params) || {};
      temperatureInput.value = params.temperature ?? "";
      maxTokensInput.value = params.max_new_tokens ?? "";
      loadSystemPrompt();
    } catch (_) {
      showNotice("error", T.network);
      return;
    }
    settingsDialog.showModal();
    temperatureInput.focus();
  }

  async function saveSettings(event) {
    event.preventDefault();
    const save = $("settings-save");
    const wanted = {};
    // Sent as typed: the server checks them and names what is wrong.
    if (temperatureInput.value.trim() !== "") wanted.temperature = Number(temperatureInput.value);
    if (maxTokensInput.value.trim() !== "") wanted.max_new_tokens = Number(maxTokensInput.value);
    save.disabled = true;
    try {
      const response = await fetch("set_generation_params", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(wanted),
        credentials: "same-origin",
      });
      const body = await readJson(response);
      if (!response.ok || !body || body.success === false) {
        settingsError.textContent = (body && body.message) || T.settingsFailed;
        settingsError.hidden = false;
        return;
      }
      const refused = await saveSystemPrompt();
      if (refused) {
        settingsError.textContent = refused;
        settingsError.hidden = false;
        return;
      }
      settingsDialog.close();
    } catch (_) {
      settingsError.textContent = T.network;
      settingsError.hidden = false;
    } finally {
      save.disabled = false;
    }
  }

  // ------------------------------------------------------------------ history

  // The server keeps the conversation in the session; show it again after a reload.
  async function loadHistory() {
    let state = "unavailable";
    try {
      const [history] = await Promise.all([fetchHistory(conversationId), refreshConversations()]);
      if (history && !busy) {
        showHistory(history);
        state = "loaded";
      }
    } finally {
      renderConversations();
      document.body.dataset.history = state;
    }
  }

  // The messages of a conversation (null: the session's current one), or null (offline; or
  // an older server, or an API selection without get_history).
  async function fetchHistory(id) {
    try {
      const query = id ? "?conversation_id=" + encodeURIComponent(id) : "";
      const response = await fetch("get_history" + query, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      const body = response.ok ? await readJson(response) : null;
      // The page shows the session's current conversation until it chooses another.
      if (body && conversationId === null && body.conversation_id != null) {
        conversationId = String(body.conversation_id);
      }
      return body && Array.isArray(body.messages) ? body.messages : null;
    } catch (_) {
      return null;
    }
  }

  // A stream that could not be resumed (it ended long ago): the server may have kept the
  // whole reply; then show it instead of the cut one.
  async function recoverFromHistory(replyId) {
    const history = await fetchHistory(conversationId);
    const kept = history && history.find((m) => m && m.id === replyId);
    if (!kept || kept.status === "streaming" || busy) return;
    showHistory(history);
    hideNotice();
  }

  function showHistory(history) {
    closeEditor();
    for (const message of messages.slice()) removeMessage(message);
    for (const data of history) {
      if (!data || (data.role !== "user" && data.role !== "assistant")) continue;
      addMessage({
        id: data.id,
        role: data.role,
        content: typeof data.content === "string" ? data.content : "",
        status: data.status,
        finish_reason: data.finish_reason,
        feedback: data.feedback,
        versions: data.versions,
      });
    }
    refreshAll();
    scrollToBottom();
  }

  // ------------------------------------------------------------------ conversations

  // Several conversations per session (GET /conversations): a sidebar on wide screens, an
  // overlay behind the menu button on narrow ones. Every chat call names the conversation this
  // page shows, so that a tab keeps to its own even when another tab switches. While a reply
  // streams, switching, New chat and Delete are disabled (Stop first); renaming is not.
  const sidebar = $("sidebar");
  const sidebarToggle = $("sidebar-toggle");
  const conversationList = $("conversations");
  const newChatButton = $("new-chat");
  const systemPromptField = $("system-prompt-field");
  const systemPromptInput = $("setting-system-prompt");
  let conversationId = null; // the conversation shown (null: the session's current one, if any)
  let conversations = []; // [{id, title, messages, system_prompt}], most recently used first
  let conversationsAvailable = false; // the server has /conversations (and allows it)
  let renaming = null; // the id whose title is being edited in the list

  function withConversation(body) {
    return conversationId ? Object.assign({}, body, { conversation_id: conversationId }) : body;
  }

  function conversationPath(id, action) {
    return "conversations/" + encodeURIComponent(id) + (action ? "/" + action : "");
  }

  // A JSON request about conversations or versions: its body, or null once a notice says why.
  async function request(path, method, body) {
    try {
      const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const response = await fetch(path, init);
      const answer = await readJson(response);
      if (!response.ok || !answer || answer.success === false) {
        const why = refusal(response, answer);
        showNotice(why.kind, why.conflict ? T.conversationBusy : why.text || T.conversationFailed);
        if (why.gone) showCurrentConversation();
        return null;
      }
      return answer;
    } catch (_) {
      showNotice("error", T.network);
      return null;
    }
  }

  // Reads the list again (titles change after a first reply; the order after every turn).
  async function refreshConversations() {
    let body = null;
    try {
      const response = await fetch("conversations", {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      body = response.ok ? await readJson(response) : null;
    } catch (_) {
      return; // offline: keep what is shown
    }
    if (!body || !Array.isArray(body.conversations)) {
      conversationsAvailable = false; // an older server, or an API selection without it
      sidebar.hidden = true;
      sidebarToggle.hidden = true;
      return;
    }
    conversationsAvailable = true;
    conversations = body.conversations
      .filter((c) => c && c.id != null)
      .map((c) => ({
        id: String(c.id),
        title: typeof c.title === "string" ? c.title : "",
        messages: Number(c.messages) || 0,
        system_prompt: typeof c.system_prompt === "string" ? c.system_prompt : null,
      }));
    if (conversationId === null && body.current != null) conversationId = String(body.current);
    sidebar.hidden = false;
    sidebarToggle.hidden = false;
    renderConversations();
  }

  function renderConversations() {
    if (!conversationsAvailable || renaming !== null) return;
    if (conversationId !== null) document.body.dataset.conversation = conversationId;
    newChatButton.disabled = busy;
    // Keep the keyboard focus on the same button across the re-render.
    const active = document.activeElement;
    const focused =
      active && conversationList.contains(active) && active.closest("li")
        ? [active.closest("li").dataset.conversationId, active.dataset.action]
        : null;
    conversationList.replaceChildren();
    for (const entry of conversations) {
      const item = el("li", "conversation");
      item.dataset.conversationId = entry.id;
      const title = entry.title || T.untitled;
      const open = el("button", "conversation-open" + (entry.title ? "" : " untitled"), title);
      open.type = "button";
      open.title = title;
      open.dataset.action = "open";
      const isCurrent = entry.id === conversationId;
      if (isCurrent) open.setAttribute("aria-current", "true");
      open.disabled = busy && !isCurrent;
      open.addEventListener("click", () => openConversation(entry.id));
      const rename = iconButton("edit", T.rename, () => startRename(entry.id));
      const remove = iconButton("clear", T.deleteChat, () => deleteConversation(entry.id));
      remove.disabled = busy;
      item.append(open, rename, remove);
      conversationList.appendChild(item);
      if (focused && focused[0] === entry.id) {
        const again = item.querySelector('[data-action="' + focused[1] + '"]');
        if (again && !again.disabled) again.focus();
      }
    }
  }

  // Show another conversation: the server makes it the session's current one.
  function openConversation(id) {
    if (busy) return;
    if (id === conversationId) {
      closeSidebar();
      return;
    }
    historyLoaded = (async () => {
      hideNotice();
      const answer = await request(conversationPath(id, "select"), "POST");
      if (!answer || busy) return;
      await showConversation(id);
      closeSidebar();
    })();
  }

  async function showConversation(id) {
    if (busy) return; // a reply (or a resumed one) streams into the conversation shown
    conversationId = id;
    document.body.dataset.conversation = id;
    const history = await fetchHistory(id);
    if (busy) return;
    showHistory(history || []);
    renderConversations();
    await refreshConversations();
  }

  // The conversation shown is gone (deleted in another tab, or forgotten at the session's
  // limit): show the one the server now calls current.
  function showCurrentConversation() {
    if (busy) return;
    conversationId = null;
    historyLoaded = loadHistory();
  }

  function newChat() {
    if (busy) return;
    if (!messages.length) {
      // The one shown is empty already (or there is none yet): no second empty one.
      closeSidebar();
      focusInput();
      return;
    }
    historyLoaded = (async () => {
      hideNotice();
      const answer = await request("conversations", "POST", {});
      if (!answer || !answer.conversation || busy) return;
      conversationId = String(answer.conversation.id);
      document.body.dataset.conversation = conversationId;
      showHistory([]);
      closeSidebar();
      focusInput();
      await refreshConversations();
    })();
  }

  function deleteConversation(id) {
    if (busy) return;
    const entry = conversations.find((c) => c.id === id);
    if (!window.confirm(T.deleteConfirm((entry && entry.title) || T.untitled))) return;
    historyLoaded = (async () => {
      hideNotice();
      const answer = await request(conversationPath(id), "DELETE");
      if (!answer) return;
      if (id === conversationId && !busy) {
        // The server chose the conversation that is current now.
        conversationId = answer.current != null ? String(answer.current) : null;
        const history = await fetchHistory(conversationId);
        if (!busy) showHistory(history || []);
      }
      await refreshConversations();
    })();
  }

  // The title becomes a text box: Enter (or leaving it) saves, Esc cancels; an empty title
  // goes back to the default one (the first line of the first message).
  function startRename(id) {
    const item = conversationList.querySelector('[data-conversation-id="' + CSS.escape(id) + '"]');
    const entry = conversations.find((c) => c.id === id);
    if (!item || !entry || renaming !== null) return;
    renaming = id;
    const field = el("input", "conversation-rename");
    field.type = "text";
    field.value = entry.title;
    field.maxLength = 200;
    field.setAttribute("aria-label", T.renameLabel);
    item.replaceChildren(field);
    field.focus();
    field.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      renaming = null;
      const title = field.value.trim();
      const changed = save && title !== entry.title;
      if (changed) entry.title = title; // shown at once; the server's answer follows
      renderConversations();
      const again = conversationList.querySelector(
        '[data-conversation-id="' + CSS.escape(id) + '"] [data-action="open"]'
      );
      if (again) again.focus();
      if (changed) {
        await request(conversationPath(id), "PATCH", { title: title || null });
        await refreshConversations();
      }
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    field.addEventListener("blur", () => finish(true));
  }

  // Narrow screens: the list overlays the chat while open.
  function setSidebar(open) {
    document.body.dataset.sidebar = open ? "open" : "closed";
    sidebarToggle.setAttribute("aria-expanded", String(open));
  }

  function closeSidebar() {
    if (document.body.dataset.sidebar === "open") setSidebar(false);
  }

  sidebarToggle.addEventListener("click", () => {
    const open = document.body.dataset.sidebar !== "open";
    setSidebar(open);
    if (open) {
      const target = conversationList.querySelector('[aria-current="true"]') || newChatButton;
      target.focus();
    }
  });
  $("sidebar-backdrop").addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || document.body.dataset.sidebar !== "open") return;
    if (!sidebarToggle.offsetParent) return; // wide screen: nothing overlays
    closeSidebar();
    sidebarToggle.focus();
  });
  newChatButton.addEventListener("click", newChat);
  setSidebar(false);

  // After a turn: the ids and versions of what was shown (the user's message gets its id
  // only from the history), and the list's titles and order.
  function afterTurn(rerender) {
    historyLoaded = (async () => {
      const [history] = await Promise.all([
        fetchHistory(conversationId),
        refreshConversations(),
      ]);
      if (!history || busy) return;
      if (!mergeHistory(history) && rerender) showHistory(history);
    })();
    return historyLoaded;
  }

  // Ids and versions from the server into the messages shown, when they are the same path
  // (same roles; the replies' ids agree). False otherwise: nothing is changed.
  function mergeHistory(history) {
    const kept = history.filter((d) => d && (d.role === "user" || d.role === "assistant"));
    if (kept.length !== messages.length) return false;
    for (let i = 0; i < kept.length; i++) {
      const message = messages[i];
      if (kept[i].role !== message.role) return false;
      if (message.role === "assistant" && message.id && String(kept[i].id) !== message.id) return false;
    }
    kept.forEach((data, i) => {
      const message = messages[i];
      message.id = data.id != null ? String(data.id) : message.id;
      message.versions = Array.isArray(data.versions) ? data.versions.map(String) : null;
      update(message);
    });
    return true;
  }

  // ------------------------------------------------------------------ versions

  // "‹ 2 / 3 ›" under a message with other versions (same parent): the arrows make the
  // neighbour's branch the conversation's current path.
  function versionsNav(message) {
    const versions = message.versions;
    if (!message.id || !versions || versions.length < 2) return null;
    const index = versions.indexOf(message.id);
    if (index < 0) return null;
    const nav = el("span", "versions");
    nav.setAttribute("role", "group");
    nav.setAttribute("aria-label", T.versions);
    const prev = iconButton("prev", T.previousVersion, () => switchVersion(message, versions[index - 1], "prev"));
    const next = iconButton("next", T.nextVersion, () => switchVersion(message, versions[index + 1], "next"));
    prev.disabled = busy || index === 0;
    next.disabled = busy || index === versions.length - 1;
    nav.append(prev, el("span", "versions-count", index + 1 + " / " + versions.length), next);
    return nav;
  }

  function switchVersion(message, targetId, action) {
    if (busy || !targetId) return;
    const position = messages.indexOf(message);
    historyLoaded = (async () => {
      hideNotice();
      const answer = await request("switch_version", "POST", withConversation({ message_id: targetId }));
      if (!answer || !Array.isArray(answer.messages) || busy) return;
      const top = scroller.scrollTop;
      showHistory(answer.messages);
      scroller.scrollTop = top; // the message stays where it was, not the end of the thread
      // The focus stays on the arrow (or the other one, at an end).
      const shown = messages[position];
      const buttons = shown ? shown.parts.actions : null;
      const again =
        buttons && (buttons.querySelector('[data-action="' + action + '"]:not(:disabled)') ||
          buttons.querySelector(".versions button:not(:disabled)"));
      if (again) again.focus();
      await refreshConversations();
    })();
  }

  // ------------------------------------------------------------------ editing a sent message

  let editing = null; // {message, box}

  function fillUserActions(message, actions) {
    if (!message.id) return;
    const versions = versionsNav(message);
    if (versions) actions.appendChild(versions);
    const edit = iconButton("edit", T.edit, () => openEditor(message));
    edit.disabled = busy;
    actions.appendChild(edit);
  }

  function lastUser() {
    for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === "user") return messages[i];
    return null;
  }

  // ↑ in the empty message box: edit the last message sent (once its id is known).
  async function editLastMessage() {
    await historyLoaded;
    const last = lastUser();
    if (last && !busy) openEditor(last);
  }

  function openEditor(message) {
    if (busy || !message.id || !messages.includes(message)) return;
    closeEditor();
    const box = el("div", "editor");
    const area = el("textarea");
    area.rows = 1;
    area.value = message.content;
    area.setAttribute("aria-label", T.editLabel);
    area.setAttribute("enterkeyhint", "send");
    const buttons = el("div", "editor-buttons");
    const cancel = el("button", "ghost-button", T.cancel);
    cancel.type = "button";
    const send = el("button", "primary-button", T.send);
    send.type = "button";
    buttons.append(cancel, send);
    box.append(area, buttons);
    message.node.classList.add("editing");
    message.node.querySelector(".body").appendChild(box);
    editing = { message, box };
    const grow = () => {
      area.style.height = "auto";
      area.style.height = Math.min(area.scrollHeight, 300) + "px";
      send.disabled = !area.value.trim();
    };
    grow();
    area.addEventListener("input", grow);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        closeEditor();
        focusInput();
        return;
      }
      if (event.key !== "Enter" || event.isComposing || event.keyCode === 229) return;
      if (event.shiftKey || event.altKey) return; // a newline
      event.preventDefault();
      submitEdit(message, area.value);
    });
    cancel.addEventListener("click", () => {
      closeEditor();
      focusInput();
    });
    send.addEventListener("click", () => submitEdit(message, area.value));
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
    box.scrollIntoView({ block: "nearest" });
  }

  function closeEditor() {
    if (!editing) return;
    editing.message.node.classList.remove("editing");
    editing.box.remove();
    editing = null;
  }

  // Sends the new version of a user message: what followed it is replaced on screen by the
  // new reply (the server keeps it as the other version).
  async function submitEdit(message, text) {
    if (busy || !text.trim()) return;
    await historyLoaded;
    if (busy || !messages.includes(message) || !message.id) return;
    closeEditor();
    hideNotice();
    const before = message.content;
    const after = messages.slice(messages.indexOf(message) + 1);
    for (const later of after) removeMessage(later);
    setText(message, text);
    const reply = addMessage({ role: "assistant", content: "", status: "pending" });
    reply.pendingLabel = T.waiting;
    update(reply);
    scrollToBottom();
    const undo = () => {
      removeMessage(reply);
      setText(message, before);
      for (const later of after) {
        messages.push(later);
        list.appendChild(later.node);
      }
      refreshAll();
    };
    await runTurn({ user_input: text, edit_message_id: message.id }, reply, {
      undo,
      retry: () => submitEdit(message, text),
      roleGranted: undo,
    });
  }

  // ------------------------------------------------------------------ system prompt

  // The conversation's own system prompt (empty: the model's default), in the settings dialog.
  let loadedSystemPrompt = "";

  function loadSystemPrompt() {
    systemPromptField.hidden = !conversationsAvailable;
    const entry = conversations.find((c) => c.id === conversationId);
    loadedSystemPrompt = (entry && entry.system_prompt) || "";
    systemPromptInput.value = loadedSystemPrompt;
  }

  // Saves it when it changed; the server's refusal as a sentence, or null.
  async function saveSystemPrompt() {
    if (!conversationsAvailable) return null;
    const value = systemPromptInput.value;
    if (value === loadedSystemPrompt) return null;
    const wanted = { system_prompt: value.trim() ? value : null };
    const path = conversationId ? conversationPath(conversationId) : "conversations";
    try {
      const response = await fetch(path, {
        method: conversationId ? "PATCH" : "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(wanted),
        credentials: "same-origin",
      });
      const body = await readJson(response);
      if (!response.ok || !body || body.success === false) {
        return (body && body.message) || T.settingsFailed;
      }
      if (!conversationId && body.conversation) conversationId = String(body.conversation.id);
      loadedSystemPrompt = value;
      await refreshConversations();
      return null;
    } catch (_) {
      return T.network;
    }
  }

  // ------------------------------------------------------------------ events

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage(input.value);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && busy) {
      event.preventDefault();
      stop();
      return;
    }
    if (event.key === "ArrowUp" && !input.value && !busy && !event.isComposing) {
      if (event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
      event.preventDefault();
      editLastMessage();
      return;
    }
    if (event.key !== "Enter") return;
    // Enter that confirms an IME conversion (Japanese input) must not send.
    if (event.isComposing || event.keyCode === 229) return;
    if (event.shiftKey || event.altKey) return; // a newline
    event.preventDefault();
    sendMessage(input.value);
  });

  input.addEventListener("input", () => {
    autoGrow();
    updateSendButton();
  });

  stopButton.addEventListener("click", stop);
  clearButton.addEventListener("click", clearChat);
  settingsButton.addEventListener("click", openSettings);
  $("settings-cancel").addEventListener("click", () => settingsDialog.close());
  settingsForm.addEventListener("submit", saveSettings);

  setBusy(false);
  historyLoaded = loadHistory().then(resumePending);
  focusInput();
})();
