/* install_internal.h: what install.c and install_*.c share (the `install` and `uninstall` verbs,
 * include/pcns_install.h). Private to them: the sender sees only pcns_install.h.
 *
 * The steps return 0 when done (saying on stdout what they did) and 1 when they failed (having
 * said why on stderr). The shared helpers are prefixed inst_: the sender's own say(),
 * config_load() and config_free() link into the same exe.
 */
#ifndef PCNS_INSTALL_INTERNAL_H
#define PCNS_INSTALL_INTERNAL_H

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <wchar.h>

#include "pcns_config.h"
#include "pcns_install.h"

#define PATH_CAP 1024

/* ---- install_common.c: output, formatting, the configuration ---- */

/* Print on stdout (say) or stderr (complain): WriteConsoleW on a console, UTF-8 when redirected,
 * nothing when there is neither (the MSI's custom action). */
void inst_say(const wchar_t *fmt, ...);
void inst_complain(const wchar_t *fmt, ...);
/* "<what>: <system message> (error N)" on stderr; returns 1, the failing exit code. */
int inst_fail(const wchar_t *what, DWORD err);
/* _vsnwprintf into out[cap], always terminated; FALSE (and out empty) when it did not fit. */
BOOL inst_fmt(wchar_t *out, size_t cap, const wchar_t *format, ...);
/* Case-insensitive, ordinal: a[0..alen) against the NUL-terminated b. */
BOOL inst_same_name(const wchar_t *a, int alen, const wchar_t *b);
/* Open a file or a folder for `access` with backup semantics, sharing everything. */
HANDLE inst_open_any(const wchar_t *path, DWORD access);
/* HKLM\SOFTWARE\pcns\Sender as the filter and the sender read it (src/config.c), or NULL having
 * said why; freed with inst_config_free() (which takes NULL). */
pcns_config *inst_config_load(void);
void inst_config_free(pcns_config *cfg);

/* ---- the steps, in install's order; uninstall undoes them (install.c says in which order) ---- */

/* install_dll.c: pcnsflt.dll in System32 (src_opt, the --dll PATH, or NULL: beside the exe). */
int install_dll(const wchar_t *src_opt, const wchar_t *exe_dir);
int uninstall_dll(void);

/* install_spool.c: the spool folder and bad\, SYSTEM only; uninstall keeps one that is not
 * empty, and an empty one when `keep`. */
int install_spool(void);
int uninstall_spool(BOOL keep);

/* install_service.c: the event source (messages from `exe`) and the pcns-sender service. */
int install_event_source(const wchar_t *exe);
int uninstall_event_source(void);
int install_service(const wchar_t *exe);
int uninstall_service(void);
/* Url and Source set: `configure` has run, so the sender has something to do. */
BOOL inst_sender_configured(void);

/* install_packages.c: add pcnsflt to LSA's Notification Packages (adding) or take it out. */
int packages_edit(BOOL adding);

#endif
