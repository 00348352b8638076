#include "CCurlShim.h"

CURLcode sheaf_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode sheaf_easy_setopt_ptr(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode sheaf_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode sheaf_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode sheaf_easy_setopt_blob(CURL *handle, CURLoption option, const void *data, size_t length) {
    struct curl_blob blob = { (void *)data, length, CURL_BLOB_COPY };
    return curl_easy_setopt(handle, option, &blob);
}
CURLcode sheaf_easy_setopt_data_callback(CURL *handle, CURLoption option, sheaf_curl_data_callback value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode sheaf_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode sheaf_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode sheaf_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLMcode sheaf_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}
unsigned int sheaf_curl_version_num(void) {
    return curl_version_info(CURLVERSION_NOW)->version_num;
}

CURLcode sheaf_msg_result(const CURLMsg *message) {
    return message->data.result;
}

/* The sockets curl opens and closes for a transport's connections: curl keeps its connection
   pool to itself, and these callbacks are the one place that sees every socket. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

sheaf_sockets *sheaf_sockets_create(void) {
    return calloc(1, sizeof(sheaf_sockets));
}

void sheaf_sockets_destroy(sheaf_sockets *sockets) {
    if (!sockets) return;
    free(sockets->fds);
    free(sockets->ports);
    free(sockets->requests);
    free(sockets);
}

long sheaf_sockets_count(const sheaf_sockets *sockets) {
    return __atomic_load_n(&sockets->count, __ATOMIC_RELAXED);
}

/* Takes entry `i` out of the table (the last one takes its place). */
static void sheaf_sockets_remove(sheaf_sockets *sockets, int i) {
    sockets->used--;
    sockets->fds[i] = sockets->fds[sockets->used];
    sockets->ports[i] = sockets->ports[sockets->used];
    sockets->requests[i] = sockets->requests[sockets->used];
    __atomic_sub_fetch(&sockets->count, 1, __ATOMIC_RELAXED);
}

static curl_socket_t sheaf_open_socket(void *userp, curlsocktype purpose, struct curl_sockaddr *address) {
    (void)purpose;
    sheaf_sockets *sockets = userp;
    if (sockets->used == sockets->capacity) {
        int capacity = sockets->capacity ? sockets->capacity * 2 : 8;
        curl_socket_t *fds = realloc(sockets->fds, capacity * sizeof *fds);
        if (fds) sockets->fds = fds;
        int *ports = realloc(sockets->ports, capacity * sizeof *ports);
        if (ports) sockets->ports = ports;
        long *requests = realloc(sockets->requests, capacity * sizeof *requests);
        if (requests) sockets->requests = requests;
        if (!fds || !ports || !requests) return CURL_SOCKET_BAD;
        sockets->capacity = capacity;
    }
    curl_socket_t fd = socket(address->family, address->socktype, address->protocol);
    if (fd == CURL_SOCKET_BAD) return fd;
    /* libcurl 7.88 closes a connection attempt it gives up on (a transfer removed while it
       connects) without the close callback, so its entry stayed and the connections gauge only
       grew. The kernel hands out a closed descriptor's number again: an entry with the new
       socket's number is one of those, closed already. */
    for (int i = 0; i < sockets->used; i++) {
        if (sockets->fds[i] == fd) {
            sheaf_sockets_remove(sockets, i);
            break;
        }
    }
    sockets->fds[sockets->used] = fd;
    sockets->ports[sockets->used] = 0;
    sockets->requests[sockets->used] = 0;
    sockets->used++;
    __atomic_add_fetch(&sockets->count, 1, __ATOMIC_RELAXED);
    return fd;
}

static int sheaf_close_socket(void *userp, curl_socket_t fd) {
    sheaf_sockets *sockets = userp;
    for (int i = 0; i < sockets->used; i++) {
        if (sockets->fds[i] != fd) continue;
        sheaf_sockets_remove(sockets, i);
        break;
    }
    return close(fd);
}

static int sheaf_local_port(curl_socket_t fd) {
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &length) != 0) return 0;
    if (address.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&address)->sin_port);
    if (address.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&address)->sin6_port);
    return 0;
}

/* The connection a request is about to go on, found by its local port (curl names it no other
   way here); each socket's port is looked up once. -1 when none matches. */
static int sheaf_find_connection(sheaf_sockets *sockets, int local_port) {
    for (int i = 0; i < sockets->used; i++) {
        if (sockets->ports[i] == 0) sockets->ports[i] = sheaf_local_port(sockets->fds[i]);
        if (sockets->ports[i] == local_port) return i;
    }
    return -1;
}

static int sheaf_before_request(void *userp, char *primary_ip, char *local_ip, int primary_port, int local_port) {
    (void)primary_ip; (void)local_ip; (void)primary_port;
    sheaf_transfer *transfer = userp;
    /* curl re-sending on its own after a reused connection died unanswered: the upstream may
       have the request already, so only a request that may go twice goes again, and not forever. */
    if (transfer->sends >= transfer->max_sends) {
        transfer->refused_send = 1;
        return CURL_PREREQFUNC_ABORT;
    }
    sheaf_sockets *sockets = transfer->sockets;
    int i = sheaf_find_connection(sockets, local_port);
    /* A fresh connection goes as it is (a TLS server may still be sending session tickets). */
    if (i >= 0 && sockets->requests[i]++ > 0) {
        char byte;
        ssize_t n = recv(sockets->fds[i], &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (!(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) {
            /* Bytes nobody asked for, the peer's close, or an error: not a connection to send on. */
            sockets->stale++;
            return CURL_PREREQFUNC_ABORT;
        }
    }
    transfer->sends++;
    return CURL_PREREQFUNC_OK;
}

CURLcode sheaf_easy_watch_sockets(CURL *handle, sheaf_transfer *transfer) {
    CURLcode code = curl_easy_setopt(handle, CURLOPT_OPENSOCKETFUNCTION, sheaf_open_socket);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_OPENSOCKETDATA, transfer->sockets);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_CLOSESOCKETFUNCTION, sheaf_close_socket);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_CLOSESOCKETDATA, transfer->sockets);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_PREREQFUNCTION, sheaf_before_request);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_PREREQDATA, transfer);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, transfer->error);
    return code;
}
