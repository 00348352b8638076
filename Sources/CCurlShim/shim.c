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
CURLcode sheaf_easy_setopt_data_callback(CURL *handle, CURLoption option, sheaf_curl_data_callback value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode sheaf_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode sheaf_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLMcode sheaf_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}
CURLcode sheaf_msg_result(const CURLMsg *message) {
    return message->data.result;
}

/* Counting the sockets curl opens and closes for a transfer's connections: curl keeps its
   connection pool to itself, and these callbacks are the one place that sees every socket. */
#include <sys/socket.h>
#include <unistd.h>
static curl_socket_t sheaf_open_socket(void *counter, curlsocktype purpose, struct curl_sockaddr *address) {
    (void)purpose;
    curl_socket_t fd = socket(address->family, address->socktype, address->protocol);
    if (fd != CURL_SOCKET_BAD) __atomic_add_fetch((long *)counter, 1, __ATOMIC_RELAXED);
    return fd;
}
static int sheaf_close_socket(void *counter, curl_socket_t fd) {
    __atomic_sub_fetch((long *)counter, 1, __ATOMIC_RELAXED);
    return close(fd);
}
CURLcode sheaf_easy_count_sockets(CURL *handle, long *counter) {
    CURLcode code = curl_easy_setopt(handle, CURLOPT_OPENSOCKETFUNCTION, sheaf_open_socket);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_OPENSOCKETDATA, counter);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_CLOSESOCKETFUNCTION, sheaf_close_socket);
    if (code == CURLE_OK) code = curl_easy_setopt(handle, CURLOPT_CLOSESOCKETDATA, counter);
    return code;
}
long sheaf_counter_load(const long *counter) {
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}
