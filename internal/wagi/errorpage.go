package wagi

import "strconv"

// AppendErrorResponse appends the CGI response wagi-fcgi sends when it
// answers for a module itself: the status, a short plain-text body and
// the request id, in the body and in X-Request-Id (docs/design.md, "HTTP
// status contract"). retryAfter, if not "", becomes Retry-After.
func AppendErrorResponse(b []byte, id string, status int, msg, retryAfter string) []byte {
	b = append(b, "Status: "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-Id: "...)
	b = append(b, id...)
	b = append(b, "\r\n"...)
	if retryAfter != "" {
		b = append(b, "Retry-After: "...)
		b = append(b, retryAfter...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, StatusText(status)...)
	b = append(b, ": "...)
	b = append(b, msg...)
	b = append(b, "\nrequest id: "...)
	b = append(b, id...)
	return append(b, '\n')
}

// StatusText is the reason phrase wagi-fcgi writes for the statuses it
// produces itself.
func StatusText(code int) string {
	switch code {
	case 200:
		return "OK"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 413:
		return "Content Too Large"
	case 500:
		return "Internal Server Error"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	}
	return "Error"
}
