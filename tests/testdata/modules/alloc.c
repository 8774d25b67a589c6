// alloc: mallocs 1 MiB blocks until malloc fails (the memory limit), then
// answers how many it got. Shows which `memory` limit a route runs under.
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    size_t n = 0;
    // volatile: without it the compiler may assume malloc never fails
    // and turn the loop into a trap.
    void *volatile p;
    while ((p = malloc(1 << 20)) != NULL) {
        n++;
    }
    printf("Content-Type: text/plain\n\nallocated %zu MiB\n", n);
    return 0;
}
