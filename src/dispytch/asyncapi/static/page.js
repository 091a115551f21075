// Renders the AsyncAPI 3.0 document embedded in this page (no network access, no libraries).
// Every text goes through textContent: names, descriptions and examples are never parsed as HTML.
(function () {
  "use strict";
  var source = document.getElementById("asyncapi-document");
  var root = document.getElementById("app");
  var doc;
  try {
    doc = JSON.parse(source.textContent);
  } catch (err) {
    root.appendChild(el("p", { class: "error" }, "The embedded AsyncAPI document is not valid JSON: " + err));
    return;
  }
  var components = doc.components || {};
  var schemas = components.schemas || {};
  var messages = components.messages || {};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, attrs[key]);
    }
    (function add(child) {
      if (child === null || child === undefined || child === false) return;
      if (Array.isArray(child)) { child.forEach(add); return; }
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    })(children);
    return node;
  }

  function entries(obj) {
    return Object.keys(obj || {}).map(function (k) { return [k, obj[k]]; });
  }

  function refName(ref, prefix) {
    return typeof ref === "string" && ref.indexOf(prefix) === 0 ? ref.slice(prefix.length) : null;
  }

  function resolveMessage(ref) {
    var name = refName(ref, "#/components/messages/");
    return name === null ? null : [name, messages[name]];
  }

  function resolveChannelRef(ref) {
    var id = refName(ref, "#/channels/");
    return id === null ? null : id.split("/")[0];
  }

  function typeOf(schema) {
    if (schema === true || schema === undefined) return "any";
    if (schema === false) return "nothing";
    var name = refName(schema.$ref, "#/components/schemas/");
    if (name !== null) return name;
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    if (schema.enum) return "enum";
    var alts = schema.anyOf || schema.oneOf;
    if (alts) return alts.map(typeOf).join(" | ");
    if (schema.allOf && schema.allOf.length === 1) return typeOf(schema.allOf[0]);
    var t = schema.type;
    if (Array.isArray(t)) t = t.join(" | ");
    if (t === "array") {
      if (Array.isArray(schema.items)) return "[" + schema.items.map(typeOf).join(", ") + "]";
      return "array of " + typeOf(schema.items);
    }
    if (!t && schema.properties) t = "object";
    return (t || "any") + (schema.format ? " (" + schema.format + ")" : "");
  }

  var CONSTRAINTS = [
    ["exclusiveMinimum", "> "], ["minimum", ">= "], ["exclusiveMaximum", "< "], ["maximum", "<= "],
    ["minLength", "min length "], ["maxLength", "max length "], ["pattern", "pattern "],
    ["minItems", "min items "], ["maxItems", "max items "], ["multipleOf", "multiple of "],
    ["default", "default "]
  ];

  function constraints(schema) {
    if (!schema || typeof schema !== "object") return [];
    var out = CONSTRAINTS.filter(function (c) { return schema[c[0]] !== undefined; })
      .map(function (c) { return c[1] + JSON.stringify(schema[c[0]]); });
    if (schema.enum) out.push("one of " + schema.enum.map(function (v) { return JSON.stringify(v); }).join(", "));
    return out;
  }

  // A schema as a tree of fields. References to components are expanded once per branch.
  function schemaTree(schema, seen) {
    seen = seen || [];
    var list = el("ul", { class: "fields" });
    if (!schema || typeof schema !== "object") return list;
    var name = refName(schema.$ref, "#/components/schemas/");
    if (name !== null) {
      if (seen.indexOf(name) >= 0) return list;
      return schemaTree(schemas[name], seen.concat([name]));
    }
    var required = schema.required || [];
    entries(schema.properties).forEach(function (pair) {
      var field = pair[0], sub = pair[1] || {};
      var row = el("li", { class: "field", "data-field": field }, [
        el("code", { class: "field-name" }, field),
        el("span", { class: "field-type" }, typeOf(sub)),
        required.indexOf(field) >= 0 ? el("span", { class: "required" }, "required") : null,
        constraints(sub).map(function (c) { return el("span", { class: "constraint" }, c); }),
        sub.description ? el("span", { class: "description" }, sub.description) : null
      ]);
      var inner = sub;
      if (sub.type === "array" && sub.items && !Array.isArray(sub.items)) inner = sub.items;
      var innerName = refName(inner.$ref, "#/components/schemas/");
      var nested = innerName !== null && seen.indexOf(innerName) < 0
        ? schemaTree(inner, seen) : (inner.properties ? schemaTree(inner, seen) : null);
      if (nested && nested.childNodes.length) row.appendChild(nested);
      (inner.anyOf || inner.oneOf || []).forEach(function (alt) {
        var altTree = schemaTree(alt, seen);
        if (altTree.childNodes.length) row.appendChild(altTree);
      });
      list.appendChild(row);
    });
    return list;
  }

  function kv(obj) {
    var table = el("table", { class: "kv" });
    entries(obj).forEach(function (pair) {
      var value = pair[1];
      table.appendChild(el("tr", {}, [
        el("th", {}, pair[0]),
        el("td", {}, typeof value === "object" ? el("code", {}, JSON.stringify(value)) : String(value))
      ]));
    });
    return table;
  }

  function extensions(obj) {
    var ext = {};
    entries(obj).forEach(function (pair) { if (pair[0].indexOf("x-") === 0) ext[pair[0]] = pair[1]; });
    return Object.keys(ext).length ? kv(ext) : null;
  }

  function section(id, title, items) {
    return el("section", { id: id }, [el("h2", {}, title + " (" + items.length + ")")].concat(items));
  }

  function link(href, text) { return el("a", { href: href }, text); }

  var info = doc.info || {};
  var listener = doc["x-dispytch-listener"];
  root.appendChild(el("header", {}, [
    el("h1", {}, [info.title || "AsyncAPI", " ", el("span", { class: "version" }, info.version || "")]),
    info.description ? el("p", {}, info.description) : null,
    el("p", { class: "meta" }, [
      "AsyncAPI " + doc.asyncapi + " · default content type " + (doc.defaultContentType || "-") + " · ",
      link(document.body.getAttribute("data-json") || "asyncapi.json", "JSON"), " · ",
      link(document.body.getAttribute("data-yaml") || "asyncapi.yaml", "YAML")
    ]),
    listener ? kv(listener) : null
  ]));

  var nav = el("nav", {}, [
    link("#servers", "Servers"), link("#operations", "Operations"), link("#channels", "Channels"),
    link("#messages", "Messages"), link("#schemas", "Schemas")
  ]);
  root.appendChild(nav);

  root.appendChild(section("servers", "Servers", entries(doc.servers).map(function (pair) {
    var s = pair[1];
    return el("article", { class: "server", id: "server-" + pair[0] }, [
      el("h3", {}, [pair[0], " ", el("span", { class: "badge" }, s.protocol + (s.protocolVersion ? " " + s.protocolVersion : ""))]),
      el("p", {}, [el("code", {}, s.host + (s.pathname || ""))]),
      s.description ? el("p", {}, s.description) : null,
      s.bindings ? kv(s.bindings) : null,
      extensions(s)
    ]);
  })));

  root.appendChild(section("operations", "Operations", entries(doc.operations).map(function (pair) {
    var op = pair[1];
    var channelId = resolveChannelRef(op.channel && op.channel.$ref);
    var channel = (doc.channels || {})[channelId] || {};
    return el("article", { class: "operation " + op.action, id: "operation-" + pair[0] }, [
      el("h3", {}, [el("span", { class: "badge " + op.action }, op.action), " ", pair[0]]),
      op.title ? el("p", { class: "title" }, op.title) : null,
      op.summary ? el("p", {}, op.summary) : null,
      el("p", {}, ["channel ", link("#channel-" + channelId, channel.address || channelId)]),
      el("p", {}, ["messages: "].concat((op.messages || []).map(function (m) {
        var key = (m.$ref || "").split("/").pop();
        return link("#message-" + key, key + " ");
      }))),
      op.bindings ? kv(op.bindings) : null,
      extensions(op)
    ]);
  })));

  root.appendChild(section("channels", "Channels", entries(doc.channels).map(function (pair) {
    var ch = pair[1];
    var params = entries(ch.parameters);
    return el("article", { class: "channel", id: "channel-" + pair[0] }, [
      el("h3", {}, [el("code", { class: "address" }, ch.address), " ", el("span", { class: "id" }, pair[0])]),
      ch.title && ch.title !== ch.address ? el("p", { class: "title" }, ch.title) : null,
      ch.summary ? el("p", {}, ch.summary) : null,
      params.length ? el("table", { class: "parameters" }, [
        el("tr", {}, [el("th", {}, "parameter"), el("th", {}, "type"), el("th", {}, "description"), el("th", {}, "location")])
      ].concat(params.map(function (p) {
        var schema = p[1]["x-dispytch-schema"];
        return el("tr", { class: "parameter", "data-parameter": p[0] }, [
          el("td", {}, el("code", {}, "{" + p[0] + "}")),
          el("td", {}, schema ? [typeOf(schema)].concat(constraints(schema).map(function (c) { return " " + c; })).join("") : "string"),
          el("td", {}, p[1].description || ""),
          el("td", {}, p[1].location ? el("code", {}, p[1].location) : "")
        ]);
      }))) : null,
      el("p", {}, ["messages: "].concat(entries(ch.messages).map(function (m) {
        var resolved = resolveMessage(m[1].$ref);
        return link("#message-" + (resolved ? resolved[0] : m[0]), m[0] + " ");
      }))),
      ch.bindings ? kv(ch.bindings) : null
    ]);
  })));

  root.appendChild(section("messages", "Messages", entries(messages).map(function (pair) {
    var m = pair[1];
    return el("article", { class: "message", id: "message-" + pair[0] }, [
      el("h3", {}, [pair[0], " ", el("span", { class: "badge" }, m.contentType || doc.defaultContentType || "")]),
      el("p", {}, ["event type ", el("code", {}, m.name || pair[0]), m.title ? " · " + m.title : ""]),
      m.summary ? el("p", {}, m.summary) : null,
      m.headers ? el("div", { class: "headers" }, [el("h4", {}, "headers"), schemaTree(m.headers)]) : null,
      el("div", { class: "payload" }, [el("h4", {}, "payload"),
        m.payload && m.payload.description ? el("p", { class: "description" }, m.payload.description) : null,
        schemaTree(m.payload)])
    ]);
  })));

  root.appendChild(section("schemas", "Schemas", entries(schemas).map(function (pair) {
    var s = pair[1] || {};
    return el("article", { class: "schema", id: "schema-" + pair[0] }, [
      el("h3", {}, [pair[0], " ", el("span", { class: "badge" }, typeOf(s))]),
      s.description ? el("p", {}, s.description) : null,
      schemaTree(s)
    ]);
  })));
  document.body.setAttribute("data-rendered", "true");
})();
