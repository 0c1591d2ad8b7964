/*
 * xlcheck: read an xl domain config with Xen's own parser (libxlutil) and check the
 * parts xl itself would interpret: every disk spec through xlu_disk_parse, every vif
 * spec through the config list API, numbers and enums through libxlutil/libxl.
 *
 * Usage: xlcheck FILE
 * Prints one normalised line per checked item on stdout ("disk 0: vdev=xvda1 ...")
 * so tests can compare Xen's reading with ours; exits 1 with libxlutil's own message
 * on stderr at the first problem.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxl.h>
#include <libxlutil.h>

static int failures;

static void fail(const char *what)
{
    fprintf(stderr, "xlcheck: %s\n", what);
    failures++;
}

static void check_string(XLU_Config *cfg, const char *key, int required)
{
    const char *value;
    int rc = xlu_cfg_get_string(cfg, key, &value, 0);
    if (rc == ESRCH) {
        if (required) {
            char msg[128];
            snprintf(msg, sizeof msg, "'%s' is required", key);
            fail(msg);
        }
        return;
    }
    if (rc) {
        char msg[128];
        snprintf(msg, sizeof msg, "'%s' is not a string", key);
        fail(msg);
        return;
    }
    printf("%s=%s\n", key, value);
}

static void check_long(XLU_Config *cfg, const char *key)
{
    long value;
    int rc = xlu_cfg_get_long(cfg, key, &value, 0);
    if (rc == ESRCH)
        return;
    if (rc) {
        char msg[128];
        snprintf(msg, sizeof msg, "'%s' is not a number", key);
        fail(msg);
        return;
    }
    printf("%s=%ld\n", key, value);
}

/*
 * xl reads on_poweroff/on_reboot/on_crash with its own table (xl_parse.c,
 * action_on_shutdown_names), not libxl's enum names: "rename-restart", not
 * "restart_rename". xl is a program, not a library, so its table is repeated here.
 */
static const char *const xl_actions[] = {
    [LIBXL_ACTION_ON_SHUTDOWN_DESTROY] = "destroy",
    [LIBXL_ACTION_ON_SHUTDOWN_RESTART] = "restart",
    [LIBXL_ACTION_ON_SHUTDOWN_RESTART_RENAME] = "rename-restart",
    [LIBXL_ACTION_ON_SHUTDOWN_PRESERVE] = "preserve",
    [LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_DESTROY] = "coredump-destroy",
    [LIBXL_ACTION_ON_SHUTDOWN_COREDUMP_RESTART] = "coredump-restart",
    [LIBXL_ACTION_ON_SHUTDOWN_SOFT_RESET] = "soft-reset",
};

static void check_action(XLU_Config *cfg, const char *key)
{
    const char *value;
    if (xlu_cfg_get_string(cfg, key, &value, 0))
        return;
    for (size_t i = 0; i < sizeof xl_actions / sizeof xl_actions[0]; i++) {
        if (xl_actions[i] && !strcmp(value, xl_actions[i])) {
            printf("%s=%s\n", key, xl_actions[i]);
            return;
        }
    }
    char msg[160];
    snprintf(msg, sizeof msg, "'%s' has unknown action '%s'", key, value);
    fail(msg);
}

static void check_type(XLU_Config *cfg)
{
    const char *value;
    libxl_domain_type type;
    if (xlu_cfg_get_string(cfg, "type", &value, 0))
        return;
    if (libxl_domain_type_from_string(value, &type) || type == LIBXL_DOMAIN_TYPE_INVALID) {
        fail("'type' is not pv, pvh or hvm");
        return;
    }
    printf("type=%s\n", libxl_domain_type_to_string(type));
}

static void check_disks(XLU_Config *cfg)
{
    XLU_ConfigList *list;
    int n, rc = xlu_cfg_get_list(cfg, "disk", &list, &n, 0);
    if (rc == ESRCH)
        return;
    if (rc) {
        fail("'disk' is not a list");
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *spec = xlu_cfg_get_listitem(list, i);
        libxl_device_disk disk;
        char msg[160];
        if (!spec) {
            snprintf(msg, sizeof msg, "disk %d is not a string", i);
            fail(msg);
            continue;
        }
        libxl_device_disk_init(&disk);
        rc = xlu_disk_parse(cfg, 1, &spec, &disk);
        if (rc) {
            snprintf(msg, sizeof msg, "disk %d: xlu_disk_parse rejected '%s'", i, spec);
            fail(msg);
        } else if (!disk.vdev || !disk.vdev[0]) {
            snprintf(msg, sizeof msg, "disk %d: no vdev in '%s'", i, spec);
            fail(msg);
        } else {
            printf("disk %d: vdev=%s target=%s format=%s access=%s%s\n", i, disk.vdev,
                   disk.pdev_path ? disk.pdev_path : "",
                   libxl_disk_format_to_string(disk.format),
                   disk.readwrite ? "rw" : "ro", disk.is_cdrom ? " cdrom" : "");
        }
        libxl_device_disk_dispose(&disk);
    }
}

static int valid_mac(const char *s)
{
    unsigned int b[6];
    char tail;
    if (strlen(s) != 17)
        return 0;
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
               &tail) != 6)
        return 0;
    return !(b[0] & 1); /* xl refuses nothing here, but a multicast MAC never works */
}

/* The vif keys xl's parse_nic_config() knows (xl-network-configuration(5)). */
static const char *const vif_keys[] = {
    "mac", "bridge", "ip", "type", "vifname", "script", "backend", "rate", "model",
    "accel", "mtu", "gatewaydev", "devid", "trusted", "untrusted", NULL,
};

static void check_vifs(XLU_Config *cfg)
{
    XLU_ConfigList *list;
    int n, rc = xlu_cfg_get_list(cfg, "vif", &list, &n, 0);
    if (rc == ESRCH)
        return;
    if (rc) {
        fail("'vif' is not a list");
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *spec = xlu_cfg_get_listitem(list, i);
        char msg[256];
        if (!spec) {
            snprintf(msg, sizeof msg, "vif %d is not a string", i);
            fail(msg);
            continue;
        }
        char *copy = strdup(spec), *save = NULL;
        printf("vif %d:", i);
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            while (*tok == ' ' || *tok == '\t')
                tok++;
            if (!*tok)
                continue;
            char *eq = strchr(tok, '=');
            if (!eq) {
                snprintf(msg, sizeof msg, "vif %d: '%s' is not key=value", i, tok);
                fail(msg);
                continue;
            }
            *eq = '\0';
            const char *value = eq + 1;
            int known = 0;
            for (const char *const *k = vif_keys; *k; k++)
                known |= !strcmp(*k, tok);
            if (!known) {
                snprintf(msg, sizeof msg, "vif %d: unknown key '%s'", i, tok);
                fail(msg);
            } else if (!strcmp(tok, "mac") && !valid_mac(value)) {
                snprintf(msg, sizeof msg, "vif %d: bad mac '%s'", i, value);
                fail(msg);
            } else if (!strcmp(tok, "rate")) {
                libxl_device_nic nic;
                libxl_device_nic_init(&nic);
                if (xlu_vif_parse_rate(cfg, value, &nic)) {
                    snprintf(msg, sizeof msg, "vif %d: bad rate '%s'", i, value);
                    fail(msg);
                }
                libxl_device_nic_dispose(&nic);
            }
            printf(" %s=%s", tok, value);
        }
        printf("\n");
        free(copy);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: xlcheck FILE\n");
        return 2;
    }
    XLU_Config *cfg = xlu_cfg_init(stderr, argv[1]);
    if (!cfg) {
        perror("xlu_cfg_init");
        return 2;
    }
    int rc = xlu_cfg_readfile(cfg, argv[1]);
    if (rc) {
        fprintf(stderr, "xlcheck: %s: libxlutil could not parse it (%s)\n", argv[1], strerror(rc));
        xlu_cfg_destroy(cfg);
        return 1;
    }
    check_string(cfg, "name", 1);
    check_type(cfg);
    static const char *const strings[] = {
        "kernel", "ramdisk", "root", "extra", "cmdline", "bootloader", "uuid", NULL,
    };
    for (const char *const *k = strings; *k; k++)
        check_string(cfg, *k, 0);
    static const char *const longs[] = { "memory", "maxmem", "vcpus", "maxvcpus", NULL };
    for (const char *const *k = longs; *k; k++)
        check_long(cfg, *k);
    check_action(cfg, "on_poweroff");
    check_action(cfg, "on_reboot");
    check_action(cfg, "on_crash");
    check_disks(cfg);
    check_vifs(cfg);
    xlu_cfg_destroy(cfg);
    return failures ? 1 : 0;
}
