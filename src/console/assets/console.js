// The console's one script: every <time datetime="…Z"> shows the reader's
// local time on hover. Pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (t) {
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d.getTime())) {
      t.title = d.toLocaleString();
    }
  });
});
