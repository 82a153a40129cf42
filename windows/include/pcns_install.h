/* pcns_install.h: the sender's `install` and `uninstall` verbs (src/install.c).
 *
 *   pcns-sender.exe install   [--dll PATH] [--no-reboot-note]
 *   pcns-sender.exe uninstall [--keep-spool] [--purge]
 *
 * argv[0] is the verb itself; the options follow it. Both print what they did on stdout, errors on
 * stderr, and return the process exit code: 0 done, 1 a step failed (the message says which;
 * running the verb again is safe), 2 usage error. Both need an elevated administrator or SYSTEM.
 */
#ifndef PCNS_INSTALL_H
#define PCNS_INSTALL_H

#include <wchar.h>

/* The names both verbs and the MSI agree on. */
#ifndef PCNS_SERVICE_NAME
#define PCNS_SERVICE_NAME L"pcns-sender"
#endif
#ifndef PCNS_SERVICE_DISPLAY
#define PCNS_SERVICE_DISPLAY L"pcns password change sender"
#endif
#ifndef PCNS_EVENT_SOURCE
#define PCNS_EVENT_SOURCE L"pcns"
#endif
#ifndef PCNS_FILTER_PACKAGE
#define PCNS_FILTER_PACKAGE L"pcnsflt"
#endif
#ifndef PCNS_FILTER_DLL
#define PCNS_FILTER_DLL L"pcnsflt.dll"
#endif

/* Enable SeBackupPrivilege and SeRestorePrivilege in this process's token (best effort), so an
 * elevated administrator can list the SYSTEM-only spool (`status`). */
void pcns_enable_backup_privileges(void);

int pcns_install(int argc, wchar_t **argv);
int pcns_uninstall(int argc, wchar_t **argv);

#endif
