// Hostile: spins forever on every invocation. The runtime must kill it at its deadline.
#include "gatehouse_lambda.h"

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation&) {
    volatile unsigned long n = 0;
    for (;;) {
      n = n + 1;
    }
    return gatehouse::lambda::Result::success("{}");
  });
}
