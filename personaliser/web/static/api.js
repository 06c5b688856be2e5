// Small fetch helper shared by the pages: same-origin JSON, the session cookie, and the
// session's CSRF token on every state-changing request (personaliser/web/auth.py).
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  class ApiError extends Error {
    constructor(status, code) {
      super(code);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method !== "GET") {
      init.headers["X-CSRF-Token"] = csrf;
    }
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network");
    }
    if (response.status === 401) {
      window.location.assign("/login");
      throw new ApiError(401, "not_authenticated");
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || "error");
    }
    return data;
  }

  window.perso = {
    ApiError,
    get: (path) => call("GET", path),
    post: (path, body) => call("POST", path, body === undefined ? {} : body),
    text(node, value) {
      node.textContent = value === null || value === undefined ? "" : String(value);
    },
    clear(node) {
      while (node.firstChild) node.removeChild(node.firstChild);
    },
    cell(row, value, cls) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      if (cls) td.className = cls;
      row.appendChild(td);
      return td;
    },
  };
})();
