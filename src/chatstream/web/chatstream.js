// Minimal chat client over the SSE protocol of /chat_stream (the full UI comes later).
(function () {
  "use strict";
  const chat = document.getElementById("chat");
  const form = document.getElementById("composer");
  const input = document.getElementById("input");
  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "message " + role;
    div.textContent = text;
    chat.appendChild(div);
    return div;
  }
  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    bubble("user", text);
    const reply = bubble("assistant", "");
    const response = await fetch("chat_stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "text/event-stream" },
      body: JSON.stringify({ user_input: text }),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const type = (block.match(/^event: (.*)$/m) || [])[1];
        const data = (block.match(/^data: (.*)$/m) || [])[1];
        if (type === "delta") reply.textContent += JSON.parse(data).text;
      }
    }
  });
})();
