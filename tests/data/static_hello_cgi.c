/* A CGI program with no dynamic dependencies, for the empty-chroot test of the
 * static fcgi-shim (tests/static_dist.rs): compiled there with `cc -static`.
 * It answers with the meta-variables the test checks and the request body. */
#include <stdio.h>
#include <stdlib.h>

static const char *var(const char *name) {
    const char *value = getenv(name);
    return value ? value : "(unset)";
}

int main(void) {
    char body[256];
    size_t n = fread(body, 1, sizeof body, stdin);
    printf("Status: 200 OK\r\n");
    printf("Content-Type: text/plain\r\n");
    printf("\r\n");
    printf("hello from a static CGI program in an empty chroot\n");
    printf("PATH_INFO=%s\n", var("PATH_INFO"));
    printf("QUERY_STRING=%s\n", var("QUERY_STRING"));
    printf("body=%.*s\n", (int)n, body);
    return 0;
}
