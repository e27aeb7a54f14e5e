/* jobmill's live pages: a few lines over Server-Sent Events; every page works without it. */
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-live");
  var state = document.getElementById("live-state");
  if (!url || !window.EventSource) return;

  function nodes(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }

  function apply(f) {
    var el = document.getElementById(f.id);
    if (el) {
      if (el.getAttribute("data-v") === f.v) return;
      var focused = document.activeElement && el.contains(document.activeElement)
        ? document.activeElement.getAttribute("href") || document.activeElement.textContent : null;
      el.replaceWith(nodes(f.html));
      if (focused !== null) {  // keep the keyboard where it was
        var again = document.getElementById(f.id);
        var items = again ? again.querySelectorAll("a, button") : [];
        for (var i = 0; i < items.length; i++) {
          if ((items[i].getAttribute("href") || items[i].textContent) === focused) { items[i].focus(); break; }
        }
      }
    } else if (f.prepend) {
      var list = document.getElementById(f.prepend);
      if (list) list.insertBefore(nodes(f.html), list.firstChild);
      var empty = document.querySelectorAll('[data-empty-of="' + f.prepend + '"]');
      for (var j = 0; j < empty.length; j++) empty[j].remove();
    }
  }

  var follow = document.getElementById("follow");
  var source = new EventSource(url);
  source.addEventListener("open", function () { if (state) state.textContent = "live"; });
  source.addEventListener("error", function () { if (state) state.textContent = "reconnecting…"; });
  source.addEventListener("fragment", function (e) { apply(JSON.parse(e.data)); });
  source.addEventListener("log", function (e) {
    var d = JSON.parse(e.data);
    var pre = document.getElementById("log-" + d.stream);
    if (!pre) return;
    pre.appendChild(document.createTextNode(d.text));
    if (!follow || follow.checked) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", function () {
    source.close();
    if (state) state.textContent = "";
  });
})();
