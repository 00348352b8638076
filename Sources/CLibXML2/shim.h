/* libxml2 on Debian is built with ICU, and its encoding.h then includes the system's
   <unicode/ucnv.h>, which clashes with the ICU copy inside Swift's Foundation. Sheaf uses no
   libxml2 API that involves ICU (only pointers to encoding handlers), so the ICU part is left out. */
#include <libxml/xmlversion.h>
#undef LIBXML_ICU_ENABLED
#include <libxml/xmlreader.h>
#include <libxml/xmlwriter.h>
#include <libxml/xmlerror.h>
#include <libxml/parser.h>
