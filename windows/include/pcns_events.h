/* Event ids of the `pcns` event source, Application log (windows/README.md, "Events"). */
#ifndef PCNS_EVENTS_H
#define PCNS_EVENTS_H

#define PCNS_EVENT_SOURCE L"pcns"

/* filter (pcnsflt.dll, inside LSASS) */
#define PCNS_EVENT_NOT_CONFIGURED 1001      /* changes are not being captured */
#define PCNS_EVENT_SPOOL_FAILED 1002        /* a change could not be spooled (never the password) */
#define PCNS_EVENT_UNPAIRED_SURROGATE 1003  /* a password with an unpaired surrogate was refused */

/* sender (pcns-sender.exe) */
#define PCNS_EVENT_REFUSED 3001             /* pcns answered 400: dropped */
#define PCNS_EVENT_BAD_RECORD 3002          /* an unreadable spool record moved aside */
#define PCNS_EVENT_SPOOL_OLD 3003           /* the oldest change is older than AlertAgeSeconds */
#define PCNS_EVENT_NOT_AUTHORIZED 3004      /* 401/403/415: kept, configuration needs fixing */
#define PCNS_EVENT_DELIVERY_FAILED 3005     /* transport, 429, 5xx: retrying */

/* The named event the filter sets after spooling a change (the sender waits on it). */
#define PCNS_SPOOL_EVENT_NAME L"Global\\pcns-spool"

#endif
