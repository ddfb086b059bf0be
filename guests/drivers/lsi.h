/* lsi: raw SCSI commands through the LSI53C895A driver (drivers/lsi.c).
 *
 * For programs that speak SCSI rather than blocks (scsiprobe): run one CDB
 * on the disk behind a struct blkdev opened with dev=lsi.  `buf` must be
 * DMA memory (dma_alloc); `len` is the exact data-phase length the device
 * is expected to move (a shorter transfer is reported as the residual). */
#ifndef GUEST_DRIVERS_LSI_H
#define GUEST_DRIVERS_LSI_H

#include <stdint.h>
#include "blkdev.h"

#define LSI_DIR_NONE 0
#define LSI_DIR_IN   1
#define LSI_DIR_OUT  2

/* Returns 0 with *status set to the SCSI status byte (0 GOOD, 2 CHECK
 * CONDITION), or a BLK_E* code when the command could not be run
 * (BLK_ENODEV: selection timeout; BLK_ETIMEDOUT; BLK_EIO: controller fault).
 * *residual (may be NULL) gets the bytes of `len` not transferred. */
/* Weak, like the blkdev driver registry: a program using these still links
 * when drivers/lsi.c is absent, and must check the pointer (NULL then). */
int lsi_scsi_command(struct blkdev *d, const uint8_t *cdb, unsigned cdb_len, int dir,
                     void *buf, uint32_t len, uint8_t *status, uint32_t *residual)
    __attribute__((weak));

/* REQUEST SENSE into sense[18]; returns as lsi_scsi_command. */
int lsi_request_sense(struct blkdev *d, uint8_t *sense) __attribute__((weak));

#endif
