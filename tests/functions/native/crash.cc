// Hostile: dies on every invocation (after taking it), like a segfaulting native function.
#include <cstdlib>

#include "gatehouse_lambda.h"

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation&) -> gatehouse::lambda::Result {
    std::abort();
  });
}
