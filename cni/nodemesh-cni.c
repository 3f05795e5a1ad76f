/*
 * nodemesh-cni: the chained CNI plugin of nodemesh.
 *
 * The container runtime runs it as the last plugin of the node's CNI config list. It is
 * deliberately dumb: it answers VERSION and GC itself and relays ADD, DEL, CHECK and STATUS to
 * the nodemesh node agent over a Unix stream socket, which decides everything (is the pod
 * enrolled, install redirection, build the result). The plugin then copies the agent's answer
 * (exit code and stdout bytes) unchanged.
 *
 * Wire protocol, version 1 (docs/CONTRACTS.md, node_agent/cni/protocol.py):
 *   request:  "NODEMESH-CNI 1\n", then one "KEY=VALUE\n" line per CNI_* variable that is set
 *             (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH),
 *             then "\n", then the raw network configuration from stdin; then shutdown(SHUT_WR).
 *   response: "NODEMESH-CNI 1 <exit code 0-255>\n", then the bytes for stdout, then EOF.
 *
 * Invariants:
 *   - stdout carries exactly one CNI result or error object, or nothing (DEL, CHECK, GC).
 *   - Every wait is bounded by one deadline (60 s, NODEMESH_CNI_TIMEOUT_SECONDS overrides).
 *   - ADD fails closed when the agent cannot be reached: an enrolled pod must never start
 *     unmeshed; the kubelet retries the sandbox. The one exception is a pod of a namespace on
 *     the agent's fallback list (node_agent/cni/fallback.py: namespaces it last saw outside the
 *     mesh), whose ADD then returns the previous result unchanged, as the agent would have, so
 *     that a down agent does not stop pods that have nothing to do with the mesh. A pod that
 *     is not a Kubernetes pod (no K8S_POD_NAMESPACE) passes the same way: the agent never
 *     meshes those. DEL and CHECK succeed instead: a pod must
 *     always be deletable (also after nodemesh is uninstalled), and a failed CHECK may be taken
 *     by the runtime as a permanent misconfiguration, while the redirection lives in the pod's
 *     own namespace and survives an agent restart.
 *   - Errors are printed as valid JSON: every message is escaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PROTO_MAGIC "NODEMESH-CNI 1"
#define DEFAULT_SOCKET "/var/run/nodemesh/cni.sock"
#define DEFAULT_FALLBACK "/var/run/nodemesh/cni-fallback"
#define FALLBACK_MAGIC "NODEMESH-CNI-FALLBACK 1"
#define MAX_FALLBACK_BYTES (1024 * 1024) /* mirrored in node_agent/cni/fallback.py */
#define DEFAULT_TIMEOUT_SECONDS 60
#define MAX_TIMEOUT_SECONDS 3600
#define MAX_CONFIG_BYTES (1024 * 1024)
#define MAX_RESPONSE_BYTES (2 * 1024 * 1024)
#define FALLBACK_CNI_VERSION "1.1.0"
#define SUPPORTED_VERSIONS "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"

/* CNI error codes (CNI spec "Error codes"); 100+ are ours, mirrored in node_agent/cni/protocol.py. */
#define CODE_INVALID_ENV 4
#define CODE_IO_FAILURE 5
#define CODE_INVALID_CONFIG 7
#define CODE_TRY_AGAIN_LATER 11
#define CODE_NOT_AVAILABLE 50
#define CODE_AGENT_PROTOCOL 102

static const char *const forwarded_env[] = {
	"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH",
};

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

static char cni_version[32] = FALLBACK_CNI_VERSION;
static int out_of_memory;

static int buf_append(struct buf *b, const void *data, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + len + 1)
			cap *= 2;
		char *p = realloc(b->data, cap);
		if (!p) {
			out_of_memory = 1;
			return -1;
		}
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return 0;
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Appends s as the inside of a JSON string: quotes, backslashes and control characters escaped;
 * bytes outside ASCII become U+FFFD so the output is always valid UTF-8. */
static void json_escape(struct buf *out, const char *s)
{
	char tmp[8];
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			tmp[0] = '\\';
			tmp[1] = (char)c;
			buf_append(out, tmp, 2);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(tmp, sizeof(tmp), "\\u%04x", c);
			buf_append(out, tmp, 6);
		} else if (c >= 0x80) {
			buf_append(out, "\\ufffd", 6);
		} else {
			buf_append(out, s, 1);
		}
	}
}

static int cni_error(int code, const char *msg, const char *details)
{
	struct buf out = {0};
	char num[16];
	buf_append(&out, "{\"cniVersion\":\"", 15);
	json_escape(&out, cni_version);
	snprintf(num, sizeof(num), "%d", code);
	buf_append(&out, "\",\"code\":", 9);
	buf_append(&out, num, strlen(num));
	buf_append(&out, ",\"msg\":\"", 8);
	json_escape(&out, msg);
	buf_append(&out, "\",\"details\":\"", 13);
	json_escape(&out, details);
	buf_append(&out, "\"}\n", 3);
	if (out.data)
		write_all(STDOUT_FILENO, out.data, out.len);
	fprintf(stderr, "nodemesh-cni: %s\n", msg);
	free(out.data);
	return 1;
}

/* Reads stdin to EOF (so that the runtime writing it never gets EPIPE); keeps at most
 * MAX_CONFIG_BYTES: 0, or -1 with errno (EFBIG when there was more). */
static int read_stdin(struct buf *in)
{
	char chunk[65536];
	int too_big = 0;
	for (;;) {
		ssize_t n = read(STDIN_FILENO, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		if (too_big || in->len + (size_t)n > MAX_CONFIG_BYTES) {
			too_big = 1;
			continue;
		}
		if (buf_append(in, chunk, (size_t)n) < 0)
			return -1;
	}
	if (too_big) {
		errno = EFBIG;
		return -1;
	}
	return 0;
}

/*
 * A JSON scanner, not a parser: enough to find an object's members and copy their text. It
 * tracks strings (with escapes) and nesting; it does not check that brackets match in kind.
 * Positions are byte offsets into s; 0 as a return value means malformed or truncated.
 */
static size_t skip_ws(const char *s, size_t len, size_t i)
{
	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
		i++;
	return i;
}

/* Just past the string that starts at s[i] == '"'. */
static size_t skip_string(const char *s, size_t len, size_t i)
{
	for (i++; i < len; i++) {
		if (s[i] == '\\')
			i++;
		else if (s[i] == '"')
			return i + 1;
	}
	return 0;
}

/* Just past the value that starts at s[i]. */
static size_t skip_value(const char *s, size_t len, size_t i)
{
	if (i >= len)
		return 0;
	if (s[i] == '"')
		return skip_string(s, len, i);
	if (s[i] == '{' || s[i] == '[') {
		int depth = 0;
		for (; i < len; i++) {
			if (s[i] == '"') {
				size_t end = skip_string(s, len, i);
				if (!end)
					return 0;
				i = end - 1;
			} else if (s[i] == '{' || s[i] == '[') {
				depth++;
			} else if ((s[i] == '}' || s[i] == ']') && --depth == 0) {
				return i + 1;
			}
		}
		return 0;
	}
	size_t start = i;
	while (i < len && !strchr(",}] \t\r\n", s[i]) && s[i])
		i++;
	return i > start ? i : 0;
}

struct member {
	size_t key, key_end;	 /* the key, quotes included */
	size_t value, value_end; /* the value's text */
};

/* Steps through the members of the object whose '{' is at s[*pos] (start with *pos there; each
 * call leaves it on the ',' or '}' after the member): 1 and *m filled, 0 at the end of the
 * object, -1 malformed. */
static int next_member(const char *s, size_t len, size_t *pos, struct member *m)
{
	if (*pos >= len)
		return -1;
	if (s[*pos] == '}')
		return 0;
	if (s[*pos] != '{' && s[*pos] != ',')
		return -1;
	size_t i = skip_ws(s, len, *pos + 1);
	if (i >= len)
		return -1;
	if (s[*pos] == '{' && s[i] == '}') {
		*pos = i;
		return 0;
	}
	if (s[i] != '"' || !(m->key_end = skip_string(s, len, i)))
		return -1;
	m->key = i;
	i = skip_ws(s, len, m->key_end);
	if (i >= len || s[i] != ':')
		return -1;
	m->value = skip_ws(s, len, i + 1);
	if (!(m->value_end = skip_value(s, len, m->value)))
		return -1;
	i = skip_ws(s, len, m->value_end);
	if (i >= len || (s[i] != ',' && s[i] != '}'))
		return -1;
	*pos = i;
	return 1;
}

static int key_is(const char *s, const struct member *m, const char *key)
{
	size_t n = strlen(key);
	return m->key_end - m->key == n + 2 && memcmp(s + m->key + 1, key, n) == 0;
}

/* The value of the member named key of the object at s[obj]: 1 found, 0 not, -1 malformed. */
static int find_member(const char *s, size_t len, size_t obj, const char *key, struct member *m)
{
	if (obj >= len || s[obj] != '{')
		return -1;
	size_t pos = obj;
	int r;
	while ((r = next_member(s, len, &pos, m)) == 1)
		if (key_is(s, m, key))
			return 1;
	return r;
}

/* The top-level "cniVersion" of the configuration, only to label our own errors with it. Keeps
 * the fallback unless the value is a short, plain string ([0-9.]). */
static void scan_cni_version(const char *s, size_t len)
{
	struct member m;
	if (find_member(s, len, skip_ws(s, len, 0), "cniVersion", &m) != 1 || s[m.value] != '"')
		return;
	size_t slen = m.value_end - m.value - 2;
	if (slen > 0 && slen < sizeof(cni_version) && strspn(s + m.value + 1, "0123456789.") >= slen) {
		memcpy(cni_version, s + m.value + 1, slen);
		cni_version[slen] = '\0';
	}
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline: 1 ready, 0 timed out, -1 error (errno). */
static int wait_fd(int fd, short events, long deadline)
{
	for (;;) {
		long left = deadline - now_ms();
		if (left <= 0)
			return 0;
		struct pollfd p = {.fd = fd, .events = events};
		int r = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r > 0)
			return 1;
	}
}

enum outcome { OK, UNREACHABLE, TIMED_OUT, BROKEN };

struct exchange {
	const char *socket_path;
	struct buf response;
	char reason[256];
};

static enum outcome fail(struct exchange *x, enum outcome o, const char *what)
{
	snprintf(x->reason, sizeof(x->reason), "%s", what);
	return o;
}

static enum outcome fail_errno(struct exchange *x, enum outcome o, const char *what)
{
	snprintf(x->reason, sizeof(x->reason), "%s%s", what, strerror(errno));
	return o;
}

static enum outcome talk(struct exchange *x, const struct buf *request, long deadline)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(x->socket_path) >= sizeof(addr.sun_path))
		return fail(x, UNREACHABLE, "socket path too long");
	strcpy(addr.sun_path, x->socket_path);

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return fail_errno(x, UNREACHABLE, "");
	enum outcome o = OK;
	/* A full listen backlog answers EAGAIN on a non-blocking Unix connect: retry until the
	 * deadline rather than blocking without bound. */
	for (;;) {
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN && now_ms() < deadline) {
			struct timespec pause = {.tv_nsec = 20 * 1000000};
			nanosleep(&pause, NULL);
			continue;
		}
		o = fail_errno(x, UNREACHABLE, "");
		goto out;
	}

	size_t sent = 0;
	while (sent < request->len) {
		int r = wait_fd(fd, POLLOUT, deadline);
		if (r == 0) {
			o = fail(x, TIMED_OUT, "sending the request");
			goto out;
		}
		ssize_t n = r < 0 ? -1 : send(fd, request->data + sent, request->len - sent, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			/* The agent may have answered and closed early (e.g. request too large): read it. */
			if (errno == EPIPE || errno == ECONNRESET)
				break;
			o = fail_errno(x, BROKEN, "sending the request: ");
			goto out;
		}
		sent += (size_t)n;
	}
	shutdown(fd, SHUT_WR);

	char chunk[65536];
	for (;;) {
		int r = wait_fd(fd, POLLIN, deadline);
		if (r == 0) {
			o = fail(x, TIMED_OUT, "waiting for the answer");
			goto out;
		}
		ssize_t n = r < 0 ? -1 : recv(fd, chunk, sizeof(chunk), 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			o = fail_errno(x, BROKEN, "reading the answer: ");
			goto out;
		}
		if (n == 0)
			break;
		if (x->response.len + (size_t)n > MAX_RESPONSE_BYTES) {
			o = fail(x, BROKEN, "answer larger than the 2 MiB limit");
			goto out;
		}
		if (buf_append(&x->response, chunk, (size_t)n) < 0) {
			o = fail_errno(x, BROKEN, "reading the answer: ");
			goto out;
		}
	}
out:
	close(fd);
	return o;
}

/* Parses "NODEMESH-CNI 1 <code>\n": the exit code, or -1 when the header is malformed. */
static int parse_response(const struct buf *r, size_t *body)
{
	const char *nl = r->data ? memchr(r->data, '\n', r->len) : NULL;
	size_t magic = strlen(PROTO_MAGIC);
	if (!nl || (size_t)(nl - r->data) <= magic + 1 || memcmp(r->data, PROTO_MAGIC, magic) != 0 ||
	    r->data[magic] != ' ')
		return -1;
	int code = 0;
	const char *p = r->data + magic + 1;
	if (nl - p > 3)
		return -1;
	for (; p < nl; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		code = code * 10 + (*p - '0');
	}
	if (code > 255)
		return -1;
	*body = (size_t)(nl - r->data) + 1;
	return code;
}

/* The value of K8S_POD_NAMESPACE in CNI_ARGS ("K1=V1;K2=V2"), copied into out; NULL if absent,
 * empty or too long. */
static const char *pod_namespace(char *out, size_t size)
{
	const char *args = getenv("CNI_ARGS");
	const char *key = "K8S_POD_NAMESPACE=";
	size_t klen = strlen(key);
	for (const char *p = args; p && *p;) {
		const char *end = strchr(p, ';');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (n > klen && memcmp(p, key, klen) == 0 && n - klen < size) {
			memcpy(out, p + klen, n - klen);
			out[n - klen] = '\0';
			return out;
		}
		p = end ? end + 1 : NULL;
	}
	return NULL;
}

/* Is namespace ns on the agent's fallback list at path? 1 yes, 0 no; why says what was found. */
static int fallback_lists(const char *path, const char *ns, char *why, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		snprintf(why, size, "no fallback list at %s (%s)", path, strerror(errno));
		return 0;
	}
	struct buf list = {0};
	char chunk[65536];
	int broken = 0;
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			broken = n < 0;
			break;
		}
		if (list.len + (size_t)n > MAX_FALLBACK_BYTES || buf_append(&list, chunk, (size_t)n)) {
			broken = 1;
			break;
		}
	}
	close(fd);
	size_t mlen = strlen(FALLBACK_MAGIC);
	int listed = 0;
	if (broken || list.len < mlen + 1 || memcmp(list.data, FALLBACK_MAGIC "\n", mlen + 1) != 0 ||
	    list.data[list.len - 1] != '\n') {
		snprintf(why, size, "%s is not a readable fallback list", path);
	} else {
		size_t nlen = strlen(ns);
		for (char *line = list.data + mlen + 1; line < list.data + list.len;) {
			char *nl = memchr(line, '\n', (size_t)(list.data + list.len - line));
			if ((size_t)(nl - line) == nlen && memcmp(line, ns, nlen) == 0) {
				listed = 1;
				break;
			}
			line = nl + 1;
		}
		if (!listed)
			snprintf(why, size,
				 "namespace %s is not on the fallback list %s (it is enrolled, has pods "
				 "that opt in, or is not known to the agent)",
				 ns, path);
	}
	free(list.data);
	return listed;
}

/* ADD's result when nothing is changed: the previous result, labelled with the configuration's
 * cniVersion (as node_agent/cni/protocol.py success_output builds it). 0 written, -1 when the
 * configuration has no prevResult object. */
static int print_prev_result(const struct buf *config)
{
	const char *s = config->data;
	size_t len = config->len;
	struct member prev, m;
	if (!s || find_member(s, len, skip_ws(s, len, 0), "prevResult", &prev) != 1 ||
	    s[prev.value] != '{')
		return -1;
	struct buf out = {0};
	buf_append(&out, "{\"cniVersion\":\"", 15);
	json_escape(&out, cni_version);
	buf_append(&out, "\"", 1);
	size_t pos = prev.value;
	int r;
	while ((r = next_member(s, len, &pos, &m)) == 1) {
		if (key_is(s, &m, "cniVersion"))
			continue;
		buf_append(&out, ",", 1);
		buf_append(&out, s + m.key, m.key_end - m.key);
		buf_append(&out, ":", 1);
		buf_append(&out, s + m.value, m.value_end - m.value);
	}
	buf_append(&out, "}\n", 2);
	int ok = r == 0 && !out_of_memory && write_all(STDOUT_FILENO, out.data, out.len) == 0;
	free(out.data);
	return ok ? 0 : -1;
}

int main(void)
{
	/* Read the configuration first, whatever the command: a runtime writing it to a plugin
	 * that exited early would get EPIPE. Not from a terminal (someone running VERSION). */
	struct buf config = {0};
	int stdin_errno = 0;
	if (!isatty(STDIN_FILENO) && read_stdin(&config) < 0)
		stdin_errno = errno;
	if (config.len)
		scan_cni_version(config.data, config.len);

	const char *command = getenv("CNI_COMMAND");
	if (!command || !*command)
		return cni_error(CODE_INVALID_ENV, "CNI_COMMAND is not set",
				 "nodemesh-cni is a CNI plugin: the container runtime runs it with "
				 "CNI_COMMAND and the network configuration on stdin");
	if (strcmp(command, "VERSION") == 0) {
		const char *v = "{\"cniVersion\":\"" FALLBACK_CNI_VERSION
				"\",\"supportedVersions\":" SUPPORTED_VERSIONS "}\n";
		return write_all(STDOUT_FILENO, v, strlen(v)) == 0 ? 0 : 1;
	}
	/* GC: the agent keeps no per-attachment state that outlives the pod; its pod watch removes
	 * redirection of pods that are gone. Nothing to collect here. */
	if (strcmp(command, "GC") == 0)
		return 0;
	int is_add = strcmp(command, "ADD") == 0;
	int is_del = strcmp(command, "DEL") == 0;
	int is_check = strcmp(command, "CHECK") == 0;
	int is_status = strcmp(command, "STATUS") == 0;
	if (!is_add && !is_del && !is_check && !is_status) {
		char msg[160];
		snprintf(msg, sizeof(msg), "unknown CNI_COMMAND %.64s", command);
		return cni_error(CODE_INVALID_ENV, msg,
				 "nodemesh-cni knows ADD, DEL, CHECK, STATUS, GC and VERSION");
	}
	if (stdin_errno) {
		char msg[160];
		if (stdin_errno == EFBIG)
			snprintf(msg, sizeof(msg),
				 "network configuration on stdin is larger than %d bytes",
				 MAX_CONFIG_BYTES);
		else
			snprintf(msg, sizeof(msg), "cannot read the network configuration: %s",
				 strerror(stdin_errno));
		if (is_del)
			return 0;
		return cni_error(stdin_errno == EFBIG ? CODE_INVALID_CONFIG : CODE_IO_FAILURE, msg,
				 "the container runtime passes the configuration on stdin");
	}

	struct buf request = {0};
	buf_append(&request, PROTO_MAGIC "\n", strlen(PROTO_MAGIC) + 1);
	for (size_t i = 0; i < sizeof(forwarded_env) / sizeof(forwarded_env[0]); i++) {
		const char *v = getenv(forwarded_env[i]);
		if (!v)
			continue;
		if (strchr(v, '\n')) {
			char msg[96];
			snprintf(msg, sizeof(msg), "%s contains a newline", forwarded_env[i]);
			if (is_del)
				return 0;
			return cni_error(CODE_INVALID_ENV, msg, "CNI variables are single-line values");
		}
		buf_append(&request, forwarded_env[i], strlen(forwarded_env[i]));
		buf_append(&request, "=", 1);
		buf_append(&request, v, strlen(v));
		buf_append(&request, "\n", 1);
	}
	buf_append(&request, "\n", 1);
	if (config.len)
		buf_append(&request, config.data, config.len);
	if (out_of_memory) {
		if (is_del)
			return 0;
		return cni_error(CODE_IO_FAILURE, "out of memory building the request",
				 "the configuration is at most 1 MiB; check the node's memory");
	}

	long timeout_s = DEFAULT_TIMEOUT_SECONDS;
	const char *t = getenv("NODEMESH_CNI_TIMEOUT_SECONDS");
	if (t && *t) {
		char *end;
		timeout_s = strtol(t, &end, 10);
		if (*end || timeout_s < 1 || timeout_s > MAX_TIMEOUT_SECONDS)
			return cni_error(CODE_INVALID_ENV,
					 "NODEMESH_CNI_TIMEOUT_SECONDS is not a number of seconds "
					 "between 1 and 3600",
					 "unset it to use the default of 60 s");
	}
	struct exchange x = {.socket_path = getenv("NODEMESH_CNI_SOCKET")};
	if (!x.socket_path || !*x.socket_path)
		x.socket_path = DEFAULT_SOCKET;

	enum outcome o = talk(&x, &request, now_ms() + timeout_s * 1000);
	size_t body = 0;
	int code = -1;
	if (o == OK) {
		code = parse_response(&x.response, &body);
		if (code < 0) {
			o = BROKEN;
			snprintf(x.reason, sizeof(x.reason), "malformed answer (expected \"%s <code>\")",
				 PROTO_MAGIC);
		}
	}
	if (o == OK) {
		if (write_all(STDOUT_FILENO, x.response.data + body, x.response.len - body) < 0)
			return 1;
		return code;
	}

	char msg[1280];
	if (o == UNREACHABLE)
		snprintf(msg, sizeof(msg), "nodemesh node agent not reachable at %s: %s", x.socket_path,
			 x.reason);
	else if (o == TIMED_OUT)
		snprintf(msg, sizeof(msg), "nodemesh node agent at %s did not answer within %ld s (%s)",
			 x.socket_path, timeout_s, x.reason);
	else
		snprintf(msg, sizeof(msg), "nodemesh node agent at %s: %s", x.socket_path, x.reason);

	if (is_del || is_check) {
		/* Never block a pod's deletion (its redirection dies with its namespace; the agent's
		 * pod watch cleans up the rest) nor report a permanent failure for a transient one. */
		fprintf(stderr, "nodemesh-cni: %s: %s succeeds without the agent\n", msg, command);
		return 0;
	}
	if (is_status)
		return cni_error(CODE_NOT_AVAILABLE, msg,
				 "nodemesh-cni cannot add pods until the nodemesh node agent on this "
				 "node serves its CNI socket; check the nodemesh DaemonSet pod");
	if (o == UNREACHABLE) {
		/* Nobody can tell whether the pod is enrolled: let it start only if the agent said in
		 * advance that its namespace is outside the mesh. */
		char ns[256], why[512];
		const char *list = getenv("NODEMESH_CNI_FALLBACK_FILE");
		if (!list)
			list = DEFAULT_FALLBACK;
		int pass = 0;
		if (!pod_namespace(ns, sizeof(ns))) {
			snprintf(why, sizeof(why), "not a Kubernetes pod (no K8S_POD_NAMESPACE)");
			pass = 1;
		} else if (!*list) {
			snprintf(why, sizeof(why), "the fallback list is turned off");
		} else {
			pass = fallback_lists(list, ns, why, sizeof(why));
			if (pass)
				snprintf(why, sizeof(why), "namespace %s is on the fallback list %s", ns,
					 list);
		}
		if (pass && print_prev_result(&config) == 0) {
			fprintf(stderr, "nodemesh-cni: %s; %s: the pod starts without the mesh\n", msg,
				why);
			return 0;
		}
		if (pass)
			snprintf(why, sizeof(why), "the configuration has no prevResult object to return");
		size_t l = strlen(msg);
		snprintf(msg + l, sizeof(msg) - l, "; %s", why);
	}
	size_t l = strlen(msg);
	snprintf(msg + l, sizeof(msg) - l, "; the kubelet will retry");
	return cni_error(o == BROKEN ? CODE_AGENT_PROTOCOL : CODE_TRY_AGAIN_LATER, msg,
			 "nodemesh redirects enrolled pods before their containers start, so a pod "
			 "cannot be created on this node while the nodemesh node agent is down; check "
			 "the nodemesh DaemonSet pod on this node");
}
