// Fails its initialisation: reports /init/error and exits, as a runtime whose handler cannot
// load does.
#include "gatehouse_lambda.h"

int main() {
  gatehouse::lambda::init_error("Runtime.ImportModuleError", "cannot load handler 'nope'");
  return 2;
}
