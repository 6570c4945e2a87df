#include <criterion/criterion.h>
Test(crash, placeholder) {}
