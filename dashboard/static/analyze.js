// Upload page: POST the file to /api/v1/analyze with the CSRF header and show the JSON + overlay.
(function () {
  "use strict";
  function $(id) { return document.getElementById(id); }
  function pct(p) { return (Number(p) * 100).toFixed(1) + " %"; }
  function row(tbody, key, value) {
    var tr = document.createElement("tr");
    var th = document.createElement("th");
    th.scope = "row";
    th.textContent = key;
    var td = document.createElement("td");
    td.textContent = value;
    tr.appendChild(th);
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  function show(result) {
    var tbody = $("analyze-table");
    tbody.textContent = "";
    var r = result.result || {};
    if (r.label !== undefined) row(tbody, "AI label", r.label);
    if (r.probabilities) {
      Object.keys(r.probabilities).forEach(function (k) { row(tbody, "P(" + k + ")", pct(r.probabilities[k])); });
    }
    Object.keys(r).forEach(function (k) {
      if (k === "label" || k === "probabilities") return;
      var v = r[k];
      row(tbody, k.replace(/_/g, " "), typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));
    });
    var img = $("analyze-overlay");
    if (result.overlay_png_base64) {
      img.src = "data:image/png;base64," + result.overlay_png_base64;
      img.hidden = false;
    } else {
      img.hidden = true;
    }
    var copy = Object.assign({}, result);
    delete copy.overlay_png_base64;
    delete copy.mask_png_base64;
    $("analyze-json").textContent = JSON.stringify(copy, null, 2);
    $("analyze-result").hidden = false;
  }
  document.addEventListener("DOMContentLoaded", function () {
    var form = $("analyze-form");
    if (!form) return;
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var token = document.querySelector('meta[name="csrf-token"]').content;
      var err = $("analyze-error");
      err.hidden = true;
      $("analyze-result").hidden = true;
      $("analyze-busy").hidden = false;
      $("analyze-submit").disabled = true;
      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRF-Token": token, "Accept": "application/json" },
        credentials: "same-origin"
      }).then(function (resp) {
        return resp.json().catch(function () { return { detail: "HTTP " + resp.status }; })
          .then(function (body) { return { ok: resp.ok, status: resp.status, body: body }; });
      }).then(function (res) {
        if (res.ok) {
          show(res.body);
        } else {
          var d = res.body && res.body.detail;
          err.textContent = "Not analysed (" + res.status + "): " + (typeof d === "string" ? d : JSON.stringify(d));
          err.hidden = false;
          err.focus();
        }
      }).catch(function (e) {
        err.textContent = "Upload failed: " + e;
        err.hidden = false;
      }).finally(function () {
        $("analyze-busy").hidden = true;
        $("analyze-submit").disabled = false;
      });
    });
  });
})();
