// stderrflood: answers nothing and writes lines to stderr forever (the
// stderr cap and the time limits must hold).
#include <stdio.h>

int main(void) {
    for (unsigned long n = 0;; n++) {
        fprintf(stderr, "flooding stderr, line %lu\n", n);
    }
}
