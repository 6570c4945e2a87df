/*
 * label.c — parsing "SOURCE/SEQ" labels (label.h). Splitting at the last
 * '/' lets a source hold '/' itself (a topic, a path).
 */
#include "label.h"

#include <string.h>

int label_parse(const char *p, size_t n, char *src, size_t cap, uint64_t *seq)
{
	const char *slash = NULL;
	for (size_t i = 0; i < n; i++)
		if (p[i] == '/')
			slash = p + i;
	size_t k = slash ? (size_t)(slash - p) : 0, digits = slash ? n - k - 1 : 0;
	if (!slash || k == 0 || k >= cap || digits == 0 || digits > 20)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < digits; i++) {
		unsigned d = (unsigned)(slash[1 + i] - '0');
		if (d > 9 || v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	memcpy(src, p, k);
	src[k] = 0;
	*seq = v;
	return 0;
}
