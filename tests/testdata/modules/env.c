// env: dumps argv and environ (in order) so tests can check what a module sees.
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv) {
    fputs("Content-Type: text/plain\n\n", stdout);
    for (int i = 0; i < argc; i++) {
        printf("argv[%d]=%s\n", i, argv[i]);
    }
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        printf("env:%s\n", *e);
    }
    return 0;
}
