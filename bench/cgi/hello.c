// hello: a native CGI program, the fcgiwrap peer of the wasm hello module.
#include <stdio.h>

int main(void) {
    fputs("Content-Type: text/plain\n\nHello, world!\n", stdout);
    return 0;
}
