// hello: the smallest valid CGI module; prints a fixed text/plain greeting.
#include <stdio.h>

int main(void) {
    fputs("Content-Type: text/plain\n\nHello, world!\n", stdout);
    return 0;
}
