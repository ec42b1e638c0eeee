// GraphiQL bootstrap, adapted from strawberry-graphql 0.341.2's graphiql.html.
// It lives in its own file (not an inline <script>) so the page works under a
// strict `script-src 'self'` CSP. Globals React, ReactDOM, Cookies, GraphiQL and
// GraphiQLPluginExplorer come from the vendored UMD builds loaded before it.
(function () {
  "use strict";

  const EXAMPLE_QUERY = `# Welcome to GraphiQL 🍓
#
# GraphiQL is an in-browser tool for writing, validating, and
# testing GraphQL queries.
#
# Type queries into this side of the screen, and you will see intelligent
# typeaheads aware of the current GraphQL type schema and live syntax and
# validation errors highlighted within the text.
#
# GraphQL queries typically start with a "{" character. Lines that starts
# with a # are ignored.
#
# An example GraphQL query might look like:
#
#     {
#       field(arg: "value") {
#         subField
#       }
#     }
#
# Keyboard shortcuts:
#
#       Run Query:  Ctrl-Enter (or press the play button above)
#
#   Auto Complete:  Ctrl-Space (or just start typing)
#
`;

  // Share links: `?query=...&variables=...&operationName=...` (GraphiQL's own share
  // format, used by many tutorials) or the short `?q=...` this page writes as you type.
  // They only fill the editors: nothing runs until you press the run button (a POST).
  const parameters = {};
  for (const [key, value] of new URLSearchParams(window.location.search)) {
    parameters[key] = value;
  }
  if (parameters.query && !parameters.q) {
    parameters.q = parameters.query;
  }
  delete parameters.query;

  function updateURL(data) {
    Object.assign(parameters, data);

    const newSearch =
      "?" +
      Object.keys(parameters)
        .filter(function (key) {
          return Boolean(parameters[key]);
        })
        .map(function (key) {
          return (
            encodeURIComponent(key) + "=" + encodeURIComponent(parameters[key])
          );
        })
        .join("&");
    history.replaceState(null, "", newSearch);
  }

  // The GraphQL endpoint is the URL this page was served from (GET renders the
  // IDE, POST/WebSocket on the same path run operations).
  const fetchURL = window.location.origin + window.location.pathname;

  function httpUrlToWebSocketUrl(url) {
    const parsedURL = new URL(url);
    parsedURL.protocol = parsedURL.protocol === "https:" ? "wss:" : "ws:";
    parsedURL.hash = "";
    return parsedURL.toString();
  }

  const defaultHeaders = {};
  const csrfToken = Cookies.get("csrftoken");

  if (csrfToken) {
    defaultHeaders["x-csrftoken"] = csrfToken;
  }

  // Always send the session cookie with queries/mutations. The endpoint is
  // this page's own origin, so "include" never leaks cookies elsewhere.
  function fetchWithCredentials(input, init) {
    return window.fetch(input, Object.assign({}, init, { credentials: "include" }));
  }

  // graphiql.min.js bundles the graphql-ws client, so `subscriptionUrl` is
  // enough for graphql-transport-ws subscriptions; the browser sends the
  // same-origin cookies on the WebSocket handshake by itself.
  const fetcher = GraphiQL.createFetcher({
    url: fetchURL,
    headers: defaultHeaders,
    subscriptionUrl: httpUrlToWebSocketUrl(fetchURL),
    fetch: fetchWithCredentials,
  });

  const explorerPlugin = GraphiQLPluginExplorer.explorerPlugin();

  function GraphiQLWithExplorer() {
    const [query, setQuery] = React.useState(parameters.q || EXAMPLE_QUERY);
    const [variables, setVariables] = React.useState(parameters.variables);
    const [headers, setHeaders] = React.useState(parameters.headers);

    function onEditQuery(newQuery) {
      setQuery(newQuery);
      updateURL({ q: newQuery });
    }

    function onEditVariables(newVariables) {
      setVariables(newVariables);
      updateURL({ variables: newVariables });
    }

    function onEditHeaders(newHeaders) {
      setHeaders(newHeaders);
    }

    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      plugins: [explorerPlugin],
      query: query,
      variables: variables,
      headers: headers,
      onEditQuery: onEditQuery,
      onEditVariables: onEditVariables,
      onEditHeaders: onEditHeaders,
      inputValueDeprecation: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
    });
  }

  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQLWithExplorer));
})();
