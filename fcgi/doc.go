// Package fcgi is the FastCGI responder (application side) of wagi-fcgi:
// it sits behind nginx or Apache mod_proxy_fcgi, like php-fpm, and hands
// each request to a Handler that writes raw CGI output.
//
// Why not net/http/fcgi: the manager needs raw CGI passthrough instead of
// an http.ResponseWriter, a request context that is canceled on
// FCGI_ABORT_REQUEST and on a closed connection (how nginx and Apache
// signal a client abort), FCGI_MAX_CONNS and FCGI_MAX_REQS in
// GET_VALUES_RESULT, and a reader that never blocks on a slow handler.
//
// # Supported
//
//   - The RESPONDER role. BEGIN_REQUEST with another role is answered with
//     END_REQUEST{FCGI_UNKNOWN_ROLE}; the connection stays usable.
//   - FCGI_KEEP_CONN: kept connections serve any number of requests;
//     without the flag the connection is closed after END_REQUEST (after
//     draining the rest of STDIN for at most 2 s, so the web server is not
//     reset before it read the response). Server.IdleTimeout closes idle
//     kept connections.
//   - Bounds on what peers can make the server hold: Server.ConnLimit
//     (at the cap the longest-waiting connection without a running
//     handler makes room), Server.RequestReadTimeout (params complete, and
//     each STDIN record, within it), Server.MaxParamsTotal (params of all
//     requests together; 503 over it) and Server.MaxBodyBuffer. Accept
//     errors such as EMFILE back off and never end Serve.
//   - PARAMS split over any number of records (a pair may straddle
//     records), 1- and 4-byte lengths, limited by Server.MaxParamsBytes
//     (431 answer over the limit).
//   - STDIN streamed into Request.Body as it arrives; the reader keeps
//     reading the socket while the handler runs (see Server.MaxBodyBuffer
//     for the one exception). A body the handler leaves unread is
//     discarded up to its empty record, and a stray empty STDIN record
//     between requests is ignored, as php-fpm does.
//   - FCGI_ABORT_REQUEST and connection EOF cancel Request.Context; an
//     aborted request still ends with END_REQUEST{FCGI_REQUEST_COMPLETE}.
//   - FCGI_GET_VALUES at any time, also during a request: the answer holds
//     the asked variables among FCGI_MPXS_CONNS (always "0"),
//     FCGI_MAX_CONNS and FCGI_MAX_REQS (when set). The connection stays
//     open.
//   - Unknown record types get FCGI_UNKNOWN_TYPE (a management record, id
//     0) and the connection stays usable. Records for request ids that are
//     not active are ignored.
//   - Padding of 0 to 255 bytes on every record type (nginx pads to 8,
//     Apache does not pad); contentLength and paddingLength are independent.
//   - Output records of at most 65528 bytes padded to 8 bytes; no empty
//     STDOUT or STDERR record except the stream terminators. A small
//     response, its terminators and END_REQUEST leave in one write.
//
// A protocol error (record version other than 1, a truncated record, a
// malformed BEGIN_REQUEST or name-value pair, a second BEGIN_REQUEST for
// the active id, STDIN before the end of PARAMS) is logged as one line
// and closes the connection; a running handler sees its context canceled.
//
// # Deliberately not supported
//
//   - Multiplexing. Only one request is active per connection: a
//     BEGIN_REQUEST for another id meanwhile gets
//     END_REQUEST{FCGI_CANT_MPX_CONN}, and GET_VALUES reports
//     FCGI_MPXS_CONNS=0. FastCGI has no flow control, so multiplexed
//     requests can starve each other or exhaust memory (Jetty dropped it
//     for that reason), and no real front end multiplexes: nginx and Apache
//     use request id 1 and one connection per request.
//   - The AUTHORIZER and FILTER roles; DATA records are ignored.
//   - Parsing CGI output. Response bytes are passed through unchanged; the
//     handler writes the "Status:" and header lines itself.
package fcgi
