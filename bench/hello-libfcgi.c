/* The benchmark's ceiling: a minimal C FastCGI responder (libfcgi) answering
 * what bench/hello.py answers. Built by bench/prepare.sh (make bench,
 * make bench-flup) when libfcgi-dev is installed; the benchmarks then
 * measure it too (bench/peers.py's "cfloor"). */
#include <fcgiapp.h>

int main(void)
{
    FCGX_Request request;
    FCGX_Init();
    FCGX_InitRequest(&request, 0, 0);
    while (FCGX_Accept_r(&request) >= 0) {
        FCGX_PutS("Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n"
                  "Hello, world!\n", request.out);
        FCGX_Finish_r(&request);
    }
    return 0;
}
