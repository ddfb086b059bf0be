/* Byte order helpers for on-the-wire structures: SCSI CDBs and parameter
 * data are big-endian (SPC-4 §3.5), ATA IDENTIFY words and virtio fields
 * little-endian (as is the CPU).  Unaligned-safe (byte accesses). */
#ifndef GUEST_ENDIAN_H
#define GUEST_ENDIAN_H

#include <stdint.h>

static inline uint16_t get_be16(const void *p)
{ const uint8_t *b = p; return (uint16_t)(b[0] << 8 | b[1]); }
static inline uint32_t get_be32(const void *p)
{ const uint8_t *b = p; return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]; }
static inline uint64_t get_be64(const void *p)
{ const uint8_t *b = p; return (uint64_t)get_be32(b) << 32 | get_be32(b + 4); }
static inline void put_be16(void *p, uint16_t v)
{ uint8_t *b = p; b[0] = v >> 8; b[1] = v; }
static inline void put_be32(void *p, uint32_t v)
{ uint8_t *b = p; b[0] = v >> 24; b[1] = v >> 16; b[2] = v >> 8; b[3] = v; }
static inline void put_be64(void *p, uint64_t v)
{ put_be32(p, v >> 32); put_be32((uint8_t *)p + 4, (uint32_t)v); }

static inline uint16_t get_le16(const void *p)
{ const uint8_t *b = p; return (uint16_t)(b[0] | b[1] << 8); }
static inline uint32_t get_le32(const void *p)
{ const uint8_t *b = p; return b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24; }
static inline uint64_t get_le64(const void *p)
{ const uint8_t *b = p; return get_le32(b) | (uint64_t)get_le32(b + 4) << 32; }
static inline void put_le16(void *p, uint16_t v)
{ uint8_t *b = p; b[0] = v; b[1] = v >> 8; }
static inline void put_le32(void *p, uint32_t v)
{ uint8_t *b = p; b[0] = v; b[1] = v >> 8; b[2] = v >> 16; b[3] = v >> 24; }
static inline void put_le64(void *p, uint64_t v)
{ put_le32(p, (uint32_t)v); put_le32((uint8_t *)p + 4, v >> 32); }

#endif
