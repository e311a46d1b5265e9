// Swagger UI for /openapi.json; POSTs carry the session's CSRF token (from /api/v1/auth/csrf).
(function () {
  "use strict";
  var token = null;
  fetch("/api/v1/auth/csrf", { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (j) { token = j.csrf_token; })
    .catch(function () {});
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    requestInterceptor: function (req) {
      if (token && req.method && req.method.toUpperCase() !== "GET") {
        req.headers["X-CSRF-Token"] = token;
      }
      return req;
    },
    responseInterceptor: function (res) {
      // the login starts a new session with a new token
      try {
        if (res.url && res.url.indexOf("/api/v1/auth/login") !== -1 && res.body && res.body.csrf_token) {
          token = res.body.csrf_token;
        }
      } catch (e) { /* ignore */ }
      return res;
    }
  });
})();
