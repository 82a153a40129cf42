# installer/msi.mk, included at the end of ../Makefile: build/pcns-windows-$(PCNS_VERSION).msi
# from the built DLL and EXE, with wixl (Debian's msitools).
#
#   make -C windows msi
#
# Part of the default build (`all`) when wixl is installed and the sender is built; without wixl
# the default build goes on and says so once, and `make msi` fails with the reason.
#
# wixl resolves File/@Source relative to the directory it runs in, so the paths handed to it are
# relative to windows/. The MSI's ProductVersion must be numeric (major.minor.build): a suffix
# such as ".dev1" in the package version is cut off.

WIXL ?= wixl
MSI_VERSION := $(shell echo '$(PCNS_VERSION)' | sed 's/^\([0-9][0-9]*\(\.[0-9][0-9]*\)\{0,2\}\).*/\1/')
MSI := $(BUILD)/pcns-windows-$(PCNS_VERSION).msi
MSI_DOCDIR := ../deploy/windows
MSI_INPUTS := installer/pcns.wxs $(BUILD)/pcnsflt.dll $(BUILD)/pcns-sender.exe $(MSI_DOCDIR)/README.md \
              installer/msi.mk

.PHONY: msi

ifneq ($(wildcard src/sender.c),)
ifneq ($(shell command -v $(WIXL) 2>/dev/null),)
ALL_TARGETS += msi
else
$(info msi.mk: $(WIXL) not found (apt-get install wixl): the MSI is not built)
endif
endif

msi: $(MSI)

$(MSI): $(MSI_INPUTS)
	@command -v $(WIXL) >/dev/null 2>&1 || { echo "msi.mk: $(WIXL) not found (apt-get install wixl)" >&2; exit 1; }
	@test -n '$(MSI_VERSION)' || { echo "msi.mk: no numeric version in PCNS_VERSION='$(PCNS_VERSION)'" >&2; exit 1; }
	@mkdir -p $(@D)
	$(WIXL) -a x64 -D Version=$(MSI_VERSION) -D BuildDir=$(BUILD) -D DocDir=$(MSI_DOCDIR) \
	    -o $@.tmp installer/pcns.wxs
	mv -f $@.tmp $@
